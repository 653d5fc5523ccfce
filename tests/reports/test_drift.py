"""Drift per partition from manifests: the partition whose label mix or texts shift is
flagged and the others are not, each figure equal to scipy's on the same counts and means
(recomputed here from the outputs read back in the end-to-end case)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from scipy.spatial.distance import cosine, jensenshannon

from bertetl.config import EngineConfig
from bertetl.executors.local import LocalExecutor
from bertetl.io.manifest import EmbeddingMean, Manifest, ScoreMean, read_manifest
from bertetl.reports.drift import DriftOptions, drift_report, partition_drift
from bertetl.results import FileResult, MeanColumns, add_column_sums
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import enrich_partition
from tests.conftest import TEXTS

DAYS = [f"2026-03-{day:02d}" for day in range(1, 11)]


def manifest(
    day: str,
    labels: dict[str, int] | None = None,
    centroid: list[float] | None = None,
    models: dict[str, str] | None = None,
    prefix: str = "",
) -> Manifest:
    rows = sum((labels or {}).values()) or 100
    return Manifest(
        partition_column="date",
        partition=day,
        rows_out=rows,
        models=models or {"embed": "e", "classify": "c"},
        label_counts={prefix + "label": labels} if labels is not None else {},
        embedding_means={prefix + "embedding": EmbeddingMean(count=rows, mean=centroid)}
        if centroid is not None
        else {},
        score_means={prefix + "score": ScoreMean(count=rows, mean=0.75)}
        if labels is not None
        else {},
    )


def steady(day: int) -> dict[str, int]:
    """A label mix that wobbles a little from day to day."""
    return {"negative": 40 + day % 3, "neutral": 20, "positive": 40 - day % 3}


def expected_js(counts: dict[str, int], baseline: list[dict[str, int]]) -> float:
    """scipy's Jensen-Shannon distance (base 2), squared, against the pooled baseline."""
    labels = sorted({*counts, *(label for b in baseline for label in b)})
    pooled = [sum(b.get(label, 0) for b in baseline) for label in labels]
    return jensenshannon([counts.get(label, 0) for label in labels], pooled, base=2) ** 2


def test_a_shifted_label_mix_is_flagged_and_the_others_are_not() -> None:
    mixes = [steady(day) for day in range(10)]
    mixes[6] = {"negative": 80, "neutral": 15, "positive": 5}  # the bad night
    manifests = [manifest(day, mix) for day, mix in zip(DAYS, mixes, strict=True)]
    options = DriftOptions()
    drift = partition_drift(manifests[::-1], options)  # any order in, partition order out

    assert [p.partition for p in drift] == DAYS
    assert [p.name for p in drift if p.flagged] == ["date=2026-03-07"]
    assert drift[6].reason.startswith("labels: JS divergence")
    assert drift[0].baseline == 0 and drift[0].js_divergence is None  # nothing before it
    assert [p.baseline for p in drift] == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7]
    for at in range(1, 10):
        baseline = mixes[max(0, at - 7) : at]
        assert drift[at].js_divergence == pytest.approx(expected_js(mixes[at], baseline))
    assert drift[6].shares == {"negative": 0.8, "neutral": 0.15, "positive": 0.05}
    assert all(p.cosine_distance is None for p in drift)  # no embeddings: classify-only
    assert all(p.mean_score == 0.75 for p in drift)
    # the nights after the bad one have it in their baseline (1 of 7) and are not flagged
    assert 0 < max(p.js_divergence for p in drift[7:]) < options.js_threshold

    short = partition_drift(manifests, DriftOptions(window=3))
    assert [p.baseline for p in short] == [0, 1, 2, 3, 3, 3, 3, 3, 3, 3]
    assert short[9].js_divergence == pytest.approx(expected_js(mixes[9], mixes[6:9]))


def test_a_moved_centroid_is_flagged_against_the_count_weighted_baseline() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    centroids = [list(base + rng.normal(scale=0.05, size=16)) for _ in DAYS]
    centroids[4] = list(base + rng.normal(scale=2.0, size=16))
    manifests = [manifest(day, centroid=c) for day, c in zip(DAYS, centroids, strict=True)]
    manifests[2] = manifests[2].model_copy(
        update={"embedding_means": {"embedding": EmbeddingMean(count=300, mean=centroids[2])}}
    )
    drift = partition_drift(manifests, DriftOptions())

    assert [p.partition for p in drift if p.flagged] == ["2026-03-05"]
    assert drift[4].reason.startswith("embedding: cosine distance")
    counts = [300 if at == 2 else 100 for at in range(len(DAYS))]
    for at in range(1, len(DAYS)):
        window = range(max(0, at - 7), at)
        baseline = np.average(
            [centroids[i] for i in window], axis=0, weights=[counts[i] for i in window]
        )
        assert drift[at].cosine_distance == pytest.approx(cosine(centroids[at], baseline))
    assert all(p.js_divergence is None and p.shares == {} for p in drift)  # embed-only
    assert all(p.mean_score is None for p in drift)


def test_partitions_of_other_models_are_not_a_baseline_and_prefix_names_columns() -> None:
    old, new = {"classify": "v1"}, {"classify": "v2"}
    manifests = [
        manifest(DAYS[0], steady(0), models=old, prefix="p_"),
        manifest(DAYS[1], steady(1), models=old, prefix="p_"),
        manifest(DAYS[2], {"negative": 90, "positive": 10}, models=new, prefix="p_"),
        manifest(DAYS[3], {"negative": 88, "positive": 12}, models=new, prefix="p_"),
    ]
    drift = partition_drift(manifests, DriftOptions(), prefix="p_")
    assert [p.baseline for p in drift] == [0, 1, 0, 1]  # a new model starts a new history
    assert drift[2].js_divergence is None and not drift[2].flagged
    assert drift[3].js_divergence == pytest.approx(
        expected_js({"negative": 88, "positive": 12}, [{"negative": 90, "positive": 10}])
    )
    assert all(p.js_divergence is None for p in partition_drift(manifests, DriftOptions()))


def test_options_are_checked() -> None:
    assert DriftOptions() == DriftOptions(window=7, js_threshold=0.01, cosine_threshold=0.05)
    for bad in ({"window": 0}, {"js_threshold": -0.1}, {"cosine_threshold": 3}, {"other": 1}):
        with pytest.raises(ValidationError):
            DriftOptions(**bad)


def test_the_plot_marks_flagged_partitions(tmp_path: Path) -> None:
    import matplotlib.image

    mixes = [steady(day) for day in range(6)]
    mixes[4] = {"negative": 90, "positive": 10}
    rng = np.random.default_rng(1)
    manifests = [
        manifest(day, mix, centroid=list(rng.normal(size=8) * 0.01 + 1))
        for day, mix in zip(DAYS, mixes, strict=False)
    ]
    for manifest_ in manifests:
        folder = tmp_path / "dest" / f"date={manifest_.partition}"
        folder.mkdir(parents=True)
        (folder / "_manifest.json").write_text(manifest_.model_dump_json())
    report = drift_report(tmp_path / "dest", "date", DriftOptions(), start=DAYS[1], end=DAYS[5])
    assert [p.partition for p in report.partitions] == DAYS[1:6]  # the range, with
    assert report.partitions[0].baseline == 1  # the partitions before it as baseline
    assert report.lines() == [f"date={DAYS[4]}: {report.partitions[3].reason}"]

    path = report.draw(tmp_path / "dest" / ".bertetl-reports" / "drift.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 400 and width > 400  # label shares, JS and cosine panels
    assert [p.name for p in path.parent.iterdir()] == ["drift.png"]  # no temp file left

    empty = drift_report(tmp_path / "nothing", "date", DriftOptions())
    assert empty.partitions == [] and "no committed partitions" in empty.note
    assert empty.draw(tmp_path / "empty.png") is None and not (tmp_path / "empty.png").exists()


def test_column_sums_skip_nulls_and_follow_slices() -> None:
    """What manifests average: the non-null rows of each column, read from Arrow buffers
    (sliced and chunked arrays too), summed so that files and parts add up exactly."""
    vectors = [[1.0, 2.0], None, [3.0, 5.0], [7.0, 11.0], None]
    scores = [0.5, None, 0.25, 1.0, 0.75]
    table = pa.table(
        {
            "p_embedding": pa.array(vectors, pa.list_(pa.float32(), 2)),
            "p_label": ["a", None, "b", "b", None],
            "p_score": pa.array(scores, pa.float32()),
            "p_enrich_error": [None, "text is null", None, None, "text is blank"],
        }
    )
    columns = MeanColumns.of(table.schema, "p_enrich_error", ["p_label"])
    assert columns == MeanColumns(("p_embedding",), ("p_score",))
    assert MeanColumns.of(table.schema, "enrich_error", []) == MeanColumns()  # no prefix match

    whole, parts = FileResult("f", None), FileResult("f", None)
    add_column_sums(table, columns, whole)
    for batch in (table.slice(0, 1), table.slice(1, 3), table.slice(4)):  # offsets into buffers
        add_column_sums(pa.Table.from_batches(batch.to_batches()), columns, parts)
    for result in (whole, parts):
        embedding, score = result.embedding_sums["p_embedding"], result.score_sums["p_score"]
        assert embedding.count == 3 and np.array_equal(embedding.total, [11.0, 18.0])
        assert embedding.mean().dtype == np.float32
        assert score.count == 4 and score.mean() == pytest.approx(0.625)
    assert EmbeddingMean.of(whole.embedding_sums["p_embedding"]).mean == [3.6666667, 6.0]
    assert "embedding_sums" not in whole.to_dict()  # the enrich report leaves them out


def output_means(folder: Path) -> tuple[dict[str, int], np.ndarray, float]:
    """Label counts, mean embedding and mean score of a partition's outputs, read back."""
    table = pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("*.parquet")))
    labels = [label for label in table.column("label").to_pylist() if label is not None]
    embedded = table.filter(table.column("embedding").is_valid())
    vectors = np.stack(embedded.column("embedding").to_numpy(zero_copy_only=False))
    scores = table.column("score").drop_null().to_numpy()
    counts = {label: labels.count(label) for label in sorted(set(labels))}
    return counts, vectors.astype(np.float64).mean(axis=0), float(scores.mean())


@pytest.fixture
def shifted_source(tmp_path: Path) -> Path:
    """Five days of the same texts (in another order each day, a null among them, in two
    files); on 2026-01-04 every row holds a text of characters the models do not know."""
    src = tmp_path / "src"
    rng = np.random.default_rng(4)
    for day in range(1, 6):
        texts = [TEXTS[i] for i in rng.permutation(len(TEXTS))] + [None]
        if day == 4:
            texts = ["ж ψ " * 20] * len(TEXTS) + [None]
        folder = src / f"date=2026-01-0{day}"
        folder.mkdir(parents=True)
        for part, rows in enumerate((texts[:5], texts[5:])):
            table = pa.table({"id": range(len(rows)), "text": pa.array(rows, pa.string())})
            pq.write_table(table, folder / f"part-{part}.parquet")
    return src


def test_end_to_end_the_partition_whose_texts_change_is_flagged(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, shifted_source: Path, tmp_path: Path
) -> None:
    config = EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), classify_model=str(tiny_classifier_dir)
    )
    dest = tmp_path / "dest"
    executor = LocalExecutor(config)
    executor.setup()
    try:
        plan = plan_partitions(shifted_source, dest, "date", config)
        for item in plan.by_action("enrich"):
            enrich_partition(executor, item, dest, plan)
    finally:
        executor.teardown()

    read_back = {}
    for day in range(1, 6):
        folder = dest / f"date=2026-01-0{day}"
        committed = read_manifest(folder)
        counts, centroid, score = output_means(folder)
        assert committed.label_counts["label"] == counts
        mean = committed.embedding_means["embedding"]
        assert mean.count == committed.score_means["score"].count == 10  # not the null
        assert np.allclose(mean.mean, centroid, atol=1e-6)
        assert committed.score_means["score"].mean == pytest.approx(score, abs=1e-6)
        read_back[day] = (counts, centroid)

    # the same texts every day but the 4th: no drift but there (its labels differ as the
    # random classifier has it; its mean embedding moves by 0.04 to 0.07, the 5th's by
    # about 1/14 of that, with the 4th in its baseline)
    options = DriftOptions(js_threshold=0.5, cosine_threshold=0.015)
    report = drift_report(dest, "date", options)
    assert [p.name for p in report.flagged] == ["date=2026-01-04"]
    assert "cosine distance" in report.flagged[0].reason
    assert all(p.cosine_distance < 1e-5 for p in report.partitions[1:3])
    for at, partition in enumerate(report.partitions[1:], start=2):
        before = range(max(1, at - 7), at)
        rows = [sum(read_back[d][0].values()) for d in before]
        baseline = np.average([read_back[d][1] for d in before], axis=0, weights=rows)
        assert partition.cosine_distance == pytest.approx(
            cosine(read_back[at][1], baseline), abs=1e-6
        )
        assert partition.js_divergence == pytest.approx(
            expected_js(read_back[at][0], [read_back[d][0] for d in before]), abs=1e-9
        )
