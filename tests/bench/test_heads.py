"""`bertetl bench` for heads: NER against the token-classification pipeline, zero-shot against
sentence-transformers similarity, on tiny random models (figures meaningless, fields checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertetl.bench.heads import REVIEW_LABELS, agreement, head_cost
from bertetl.bench.systems import (
    BenchConfig,
    engine_fields,
    format_table,
    run_bench,
    split_task,
)
from bertetl.config import EngineConfig

WNUT_TEST = Path(__file__).parents[1] / "data" / "wnut17" / "test.parquet"


def test_model_prefixes_name_the_task_and_its_engine_fields() -> None:
    config = BenchConfig(ner_aggregation="max", zero_shot_labels="good,bad")
    assert split_task("ner:models/x") == ("ner", "models/x")
    assert split_task("zero-shot:minilm") == ("zero_shot", "minilm")
    assert split_task("classify:d") == ("classify", "d") and split_task("d") == ("embed", "d")
    ner = EngineConfig(text_column="text", **engine_fields("ner", "models/x", config))
    assert [(h.name, h.model) for h in ner.ner] == [("ner", "models/x")]
    assert ner.ner_aggregation == "max"
    zero_shot = EngineConfig(text_column="text", **engine_fields("zero_shot", "m", config))
    assert zero_shot.embed_model == "m" and zero_shot.zero_shot[0].label_names() == ["good", "bad"]
    default = EngineConfig(text_column="text", **engine_fields("zero_shot", "m", BenchConfig()))
    assert default.zero_shot[0].label_names() == list(REVIEW_LABELS)
    assert len(default.zero_shot[0].labels[0].descriptions) == 2


def test_agreement_counts_rows_with_the_same_entities_or_label() -> None:
    reference = [[(0, 4, "PER", 0.9)], [], [(2, 5, "LOC", 0.5), (7, 9, "ORG", 0.6)]]
    ours = [[(0, 4, "PER", 0.8999)], [], [(2, 5, "ORG", 0.5), (7, 9, "ORG", 0.6)]]
    got = agreement("ner", ours, reference)
    assert got["rows_agree"] == pytest.approx(2 / 3, abs=1e-4)
    assert got["score_max_diff"] == pytest.approx(1e-4)  # over the rows that agree only
    shifted = [[(0, 5, "PER", 0.9)], [], reference[2]]
    assert agreement("ner", shifted, reference)["rows_agree"] == pytest.approx(2 / 3, abs=1e-4)
    labels = agreement("zero_shot", [("a", 0.5), ("b", 0.7)], [("a", 0.6), ("a", 0.7)])
    assert labels == {"rows_agree": 0.5, "score_max_diff": pytest.approx(0.1)}
    with pytest.raises(ValueError, match="rows"):
        agreement("zero_shot", [("a", 0.5)], [])


def test_head_cost_is_the_median_of_paired_ratios() -> None:
    cost = head_cost([1.0, 2.0, 1.1], [0.9, 2.2, 1.1], rows=10)
    assert cost["x_embed_only"] == pytest.approx(1.0)  # ratios 0.9, 1.1, 1.0
    assert cost["embed_only_rows_per_s"] == pytest.approx(10 / 1.1, abs=0.1)


@pytest.mark.slow  # three systems, each loading its models
def test_ner_systems_agree_with_the_token_classification_pipeline(
    tiny_token_classifier_dir: Path, tmp_path: Path
) -> None:
    config = BenchConfig(
        models=[f"ner:{tiny_token_classifier_dir}"],
        inputs=[str(WNUT_TEST)],
        rows=24,
        repeats=1,
        systems=["pipeline", "sentence-transformers", "engine-model", "engine-e2e"],
        device="cpu",
        ner_aggregation="first",
        workdir=str(tmp_path),
        isolate=False,  # `bertetl bench` isolates each system; the figures here need not
    )
    report = run_bench(config)
    assert report["errors"] == []
    by_system = {r["system"]: r for r in report["results"]}
    assert set(by_system) == {"pipeline", "engine-model", "engine-e2e"}  # no s-t counterpart
    pipeline = by_system["pipeline"]
    assert pipeline["entities"] > 10  # the random model does find entities in these tweets
    for system in ("engine-model", "engine-e2e"):
        row = by_system[system]
        assert row["rows"] == 24 and row["real_tokens"] == pipeline["real_tokens"] > 24
        assert row["rows_agree"] == 1.0, system  # same spans and labels in every row
        assert row["score_max_diff"] < 1e-4
        assert row["entities"] == pipeline["entities"]
        assert row["x_pipeline"] > 0 and 0 <= row["padding_waste"] < 1
    assert by_system["engine-e2e"]["share_of_model_only"] > 0
    table = format_table(report)
    assert "agree" in table and "entities" in table and "x embed-only" not in table


def test_zero_shot_against_sentence_transformers_and_the_embedding_alone(
    tiny_embed_dir: Path, tmp_path: Path
) -> None:
    config = BenchConfig(
        models=[f"zero-shot:{tiny_embed_dir}"],
        inputs=["reviews"],
        rows=32,
        repeats=2,
        systems=["pipeline", "sentence-transformers", "engine-model", "engine-e2e"],
        device="cpu",
        zero_shot_labels="good,bad,boring",
        workdir=str(tmp_path),
        isolate=False,
    )
    report = run_bench(config)
    assert report["errors"] == []
    by_system = {r["system"]: r for r in report["results"]}
    assert set(by_system) == {"sentence-transformers", "engine-model", "engine-e2e"}
    for system in ("engine-model", "engine-e2e"):
        row = by_system[system]
        assert row["rows_agree"] == 1.0, system  # same label on every row
        assert row["score_max_diff"] < 1e-4
        assert len(row["seconds"]) == len(row["embed_only_seconds"]) == 2
        assert row["embed_only_rows_per_s"] > 0 and row["x_embed_only"] > 0
        assert row["x_sentence-transformers"] > 0
    # the embedding stage runs twice a repeat (with and without the head), its padded
    # tokens are counted once: 32 rows cut at 48 tokens waste little (counted twice: > 50%)
    assert 0 <= by_system["engine-e2e"]["padding_waste"] < 0.3
    assert "x embed-only" in format_table(report)


@pytest.mark.slow
def test_cli_benchmarks_heads(
    tiny_token_classifier_dir: Path, tiny_embed_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The CLI with both heads and their options, every system in this process (spawning
    one per system, as `bertetl bench` does, is covered by tests/bench/test_bench.py; here it
    cost four torch start-ups)."""
    import json

    from typer.testing import CliRunner

    import bertetl.bench.systems.run as systems_run
    from bertetl.cli import app

    monkeypatch.setattr(systems_run, "_isolated", systems_run._in_process)

    out = tmp_path / "bench.json"
    args = [
        "bench",
        "systems",
        "--models",
        f"ner:{tiny_token_classifier_dir},zero-shot:{tiny_embed_dir}",
        "--inputs",
        str(WNUT_TEST),
        "--systems",
        "pipeline,sentence-transformers,engine-e2e",
        "--rows",
        "8",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--ner-aggregation",
        "average",
        "--zero-shot-labels",
        "good,bad",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["ner_aggregation"] == "average"
    rows = {(r["model"].split(":")[0], r["system"]): r for r in report["results"]}
    assert set(rows) == {
        ("ner", "pipeline"),
        ("ner", "engine-e2e"),
        ("zero-shot", "sentence-transformers"),
        ("zero-shot", "engine-e2e"),
    }
    assert rows["ner", "engine-e2e"]["rows_agree"] == 1.0
    assert rows["zero-shot", "engine-e2e"]["rows_agree"] == 1.0
