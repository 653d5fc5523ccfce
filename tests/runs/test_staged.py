"""Partitioned runs without Prefect: plan, skip, reuse, commit; checked against clean runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import InputError
from bertetl.executors.local import LocalExecutor
from bertetl.io.manifest import read_manifest
from bertetl.runs.enrich import enrich
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import enrich_partition, enrich_partitions, group_partitions
from tests.outputs import assert_same_output, data_files, edit_rows, staging_is_empty


@pytest.fixture
def config(tiny_embed_dir: Path) -> EngineConfig:
    return EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))


@pytest.fixture
def pipeline(config: EngineConfig):
    pipeline = LocalExecutor(config)
    pipeline.setup()
    yield pipeline
    pipeline.teardown()


def run_all(pipeline: LocalExecutor, src: Path, dest: Path, **plan_options) -> dict[str, object]:
    """Plan and enrich every partition that needs it; returns manifests by partition."""
    plan = plan_partitions(src, dest, "date", pipeline.config, **plan_options)
    return {
        item.value: enrich_partition(pipeline, item, dest, plan)
        for item in plan.by_action("enrich")
    }


def test_partitions_enrich_like_the_engine_and_rerun_skips(
    pipeline, partitioned_source, tmp_path: Path
) -> None:
    src = partitioned_source(days=5, files_per_day=2)
    manifests = run_all(pipeline, src, tmp_path / "dest")
    assert sorted(manifests) == [f"2026-01-0{d}" for d in range(1, 6)]
    enrich(src, tmp_path / "reference", pipeline.config)
    assert assert_same_output(tmp_path / "dest", tmp_path / "reference") == 5 * 24
    for value, manifest in manifests.items():
        assert manifest.rows_in == manifest.rows_out == 24
        assert (manifest.rows_inferred, manifest.rows_reused, manifest.rows_failed) == (22, 0, 2)
        assert read_manifest(tmp_path / "dest" / f"date={value}") == manifest
        assert [f.relative for f in manifest.inputs] == ["part-0.parquet", "part-1.parquet"]

    before = data_files(tmp_path / "dest")
    plan = plan_partitions(src, tmp_path / "dest", "date", pipeline.config)
    assert {(p.action, p.reason) for p in plan.partitions} == {("skip", "unchanged")}
    assert data_files(tmp_path / "dest") == before


def test_edit_three_rows_infers_three_and_reuses_the_rest(
    pipeline, partitioned_source, tmp_path: Path
) -> None:
    src = partitioned_source(days=3)
    run_all(pipeline, src, tmp_path / "dest")
    before = data_files(tmp_path / "dest")
    edit_rows(src / "date=2026-01-02" / "part-0.parquet", [0, 5, 20])

    plan = plan_partitions(src, tmp_path / "dest", "date", pipeline.config)
    assert [(p.value, p.action, p.reason) for p in plan.partitions] == [
        ("2026-01-01", "skip", "unchanged"),
        ("2026-01-02", "enrich", "input changed"),
        ("2026-01-03", "skip", "unchanged"),
    ]
    manifests = run_all(pipeline, src, tmp_path / "dest")
    edited = manifests["2026-01-02"]
    assert (edited.rows_inferred, edited.rows_reused, edited.rows_failed) == (3, 19, 2)
    after = data_files(tmp_path / "dest")
    assert after["date=2026-01-01/part-0.parquet"] == before["date=2026-01-01/part-0.parquet"]
    assert after["date=2026-01-03/part-0.parquet"] == before["date=2026-01-03/part-0.parquet"]
    assert after["date=2026-01-02/part-0.parquet"] != before["date=2026-01-02/part-0.parquet"]
    enrich(src, tmp_path / "reference", pipeline.config)  # a clean run over the edited input
    assert_same_output(tmp_path / "dest", tmp_path / "reference")


def test_reuse_survives_hash_collisions(
    pipeline, partitioned_source, tmp_path: Path, monkeypatch
) -> None:
    """With every text hashing alike, only rows with equal text may be reused."""
    src = partitioned_source(days=1)
    run_all(pipeline, src, tmp_path / "dest")
    monkeypatch.setattr(
        "bertetl.engine.reuse.text_hashes", lambda text: np.zeros(len(text), dtype=np.uint64)
    )
    edit_rows(src / "date=2026-01-01" / "part-0.parquet", [1, 2])
    manifest = run_all(pipeline, src, tmp_path / "dest")["2026-01-01"]
    assert manifest.rows_inferred + manifest.rows_reused == 22
    enrich(src, tmp_path / "reference", pipeline.config)
    assert_same_output(tmp_path / "dest", tmp_path / "reference")


def test_duplicate_and_reordered_rows_reuse_earlier_outputs(
    pipeline, partitioned_source, tmp_path: Path
) -> None:
    src = partitioned_source(days=1)
    run_all(pipeline, src, tmp_path / "dest")
    path = src / "date=2026-01-01" / "part-0.parquet"
    table = pq.read_table(path)
    reordered = table.take(pa.array([*range(23, -1, -1), 0, 1]))  # reversed, two duplicates
    pq.write_table(reordered, path)
    manifest = run_all(pipeline, src, tmp_path / "dest")["2026-01-01"]
    assert (manifest.rows_inferred, manifest.rows_reused, manifest.rows_failed) == (0, 24, 2)
    enrich(src, tmp_path / "reference", pipeline.config)
    assert_same_output(tmp_path / "dest", tmp_path / "reference")


def test_manifest_means_are_those_of_the_outputs_reused_rows_included(
    pipeline, partitioned_source, tmp_path: Path
) -> None:
    """The mean embedding counts every row written, the reused ones too; an embed-only run
    keeps no score mean (and no label counts)."""
    src = partitioned_source(days=1)
    run_all(pipeline, src, tmp_path / "dest")
    path = src / "date=2026-01-01" / "part-0.parquet"
    table = pq.read_table(path)
    pq.write_table(table.take(pa.array([*range(23, -1, -1), 0, 1, 2])), path)  # 3 duplicates
    manifest = run_all(pipeline, src, tmp_path / "dest")["2026-01-01"]
    assert (manifest.rows_inferred, manifest.rows_reused) == (0, 25)

    output = pq.read_table(tmp_path / "dest" / "date=2026-01-01" / "part-0.parquet")
    embedded = output.column("embedding").drop_null().to_pylist()
    mean = manifest.embedding_means["embedding"]
    assert mean.count == len(embedded) == 25
    assert np.allclose(mean.mean, np.mean(np.array(embedded, dtype=np.float64), axis=0), atol=1e-7)
    assert all(repr(v) == str(np.float32(v)) for v in mean.mean)  # float32s, written short
    assert manifest.score_means == {} and manifest.label_counts == {}
    assert read_manifest(tmp_path / "dest" / "date=2026-01-01") == manifest


def test_touched_file_is_rehashed_and_skipped(pipeline, partitioned_source, tmp_path: Path) -> None:
    src = partitioned_source(days=2)
    run_all(pipeline, src, tmp_path / "dest")
    path = src / "date=2026-01-01" / "part-0.parquet"
    os.utime(path, ns=(1, 1))  # same bytes, another mtime
    plan = plan_partitions(src, tmp_path / "dest", "date", pipeline.config)
    assert [p.action for p in plan.partitions] == ["skip", "skip"]


def test_model_or_config_change_re_enriches_without_reuse(
    pipeline, partitioned_source, tmp_path: Path, tiny_classifier_dir: Path
) -> None:
    src = partitioned_source(days=1)
    run_all(pipeline, src, tmp_path / "dest")
    for changed in (
        pipeline.config.model_copy(update={"prefix": "v2_"}),
        pipeline.config.model_copy(update={"classify_model": str(tiny_classifier_dir)}),
    ):
        plan = plan_partitions(src, tmp_path / "dest", "date", changed)
        assert [(p.action, p.reason) for p in plan.partitions] == [
            ("enrich", "model or config changed")
        ]
    unchanged = pipeline.config.model_copy(update={"batch_tokens": 64, "window_rows": 5})
    plan = plan_partitions(src, tmp_path / "dest", "date", unchanged)
    assert [p.action for p in plan.partitions] == ["skip"]
    plan = plan_partitions(src, tmp_path / "dest", "date", pipeline.config, force=True)
    assert [(p.action, p.reason) for p in plan.partitions] == [("enrich", "forced")]


def test_range_and_orphans(pipeline, partitioned_source, tmp_path: Path) -> None:
    src = partitioned_source(days=5)
    manifests = run_all(pipeline, src, tmp_path / "dest", start="2026-01-02", end="2026-01-04")
    assert sorted(manifests) == ["2026-01-02", "2026-01-03", "2026-01-04"]
    assert not (tmp_path / "dest" / "date=2026-01-01").exists()
    for file in (src / "date=2026-01-03").iterdir():
        file.unlink()
    (src / "date=2026-01-03").rmdir()
    plan = plan_partitions(src, tmp_path / "dest", "date", pipeline.config)
    actions = {p.value: (p.action, p.reason) for p in plan.partitions}
    assert actions["2026-01-03"] == ("orphan", "source partition removed")
    assert actions["2026-01-01"] == ("enrich", "new")
    assert actions["2026-01-02"] == ("skip", "unchanged")


def test_a_renamed_spelling_of_a_partition_folder_commits_into_dests_folder(
    pipeline, write_table, tmp_path: Path
) -> None:
    """`day=a b` renamed `day=a%20b` (another tool's escaping) is one value: the rerun
    replaces DEST's folder for it, not a second folder that readers would read twice."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    texts = {"id": [1, 2, 3], "text": ["one two", "three", "four five"]}
    spaced = src / "day=a b"
    spaced.mkdir(parents=True)
    pq.write_table(pa.table(texts), spaced / "part-0.parquet")
    plan = plan_partitions(src, dest, "day", pipeline.config)
    (item,) = plan.by_action("enrich")
    enrich_partition(pipeline, item, dest, plan)
    spaced.rename(src / "day=a%20b")
    pq.write_table(pa.table({"id": [4], "text": ["six"]}), src / "day=a%20b" / "part-1.parquet")
    plan = plan_partitions(src, dest, "day", pipeline.config)
    (item,) = plan.by_action("enrich")
    assert (item.value, item.reason) == ("a b", "input changed")
    enrich_partition(pipeline, item, dest, plan)
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["day=a b"]
    assert sorted(pq.read_table(dest).column("id").to_pylist()) == [1, 2, 3, 4]
    plan = plan_partitions(src, dest, "day", pipeline.config)  # and it settles
    assert [(p.action, p.reason) for p in plan.partitions] == [("skip", "unchanged")]


def test_rows_that_are_not_utf8_are_an_outcome_and_rerun_with_reuse(
    pipeline, tmp_path: Path
) -> None:
    """A string column a careless writer filled with other bytes: those rows get their
    `enrich_error`, the others their outputs, and a rerun reuses rows beside them."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    folder = src / "date=2026-01-01"
    folder.mkdir(parents=True)
    raw = [b"good text", b"\xff\xfe not utf-8 \xc3", b"more good text"]
    text = pa.array(raw, pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": [1, 2, 3], "text": text}), folder / "part-0.parquet")
    (manifest,) = run_all(pipeline, src, dest).values()
    assert (manifest.rows_out, manifest.rows_failed) == (3, 1)
    raw.append(b"a new row")
    text = pa.array(raw, pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": text}), folder / "part-0.parquet")
    (manifest,) = run_all(pipeline, src, dest).values()
    assert (manifest.rows_inferred, manifest.rows_reused, manifest.rows_failed) == (1, 2, 1)
    out = pq.read_table(dest)
    assert out.column("enrich_error").to_pylist() == [None, "text is not valid UTF-8", None, None]
    assert out.column("text").combine_chunks().view(pa.binary()).to_pylist() == raw


def test_a_manifest_whose_counts_were_edited_is_redone(
    pipeline, partitioned_source, tmp_path: Path
) -> None:
    """Its output files verify, but its rows do not add up: the files are the truth."""
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    run_all(pipeline, src, dest)
    path = dest / "date=2026-01-02" / "_manifest.json"
    edited = json.loads(path.read_text())
    edited["rows_in"] = edited["rows_out"] = 999
    path.write_text(json.dumps(edited))
    plan = plan_partitions(src, dest, "date", pipeline.config)
    actions = {p.value: (p.action, p.reason) for p in plan.partitions}
    assert actions["2026-01-01"] == ("skip", "unchanged")
    action, reason = actions["2026-01-02"]
    assert action == "enrich" and "counts disagree (rows_in 999, rows_out 999" in reason
    assert read_manifest(dest / "date=2026-01-02") is not None
    (manifest,) = run_all(pipeline, src, dest).values()
    assert manifest.rows_in == manifest.rows_out == 24


def test_a_dest_holding_one_value_in_two_folders_is_refused(
    pipeline, partitioned_source, tmp_path: Path
) -> None:
    """Left by an earlier version: readers see those rows twice, and the run says so."""
    src = partitioned_source(days=1)
    dest = tmp_path / "dest"
    run_all(pipeline, src, dest)
    shutil.copytree(dest / "date=2026-01-01", dest / "date=2026%2D01%2D01")
    with pytest.raises(InputError, match=r"partition date=2026-01-01 in two folders"):
        plan_partitions(src, dest, "date", pipeline.config)


def test_corrupt_file_fails_its_partition_and_keeps_the_committed_version(
    pipeline, partitioned_source, tmp_path: Path
) -> None:
    src = partitioned_source(days=2, files_per_day=2)
    run_all(pipeline, src, tmp_path / "dest")
    committed = pq.read_table(tmp_path / "dest" / "date=2026-01-02")
    bad = src / "date=2026-01-02" / "part-1.parquet"
    bad.write_bytes(bad.read_bytes()[:-40])  # truncated: footer gone
    plan = plan_partitions(src, tmp_path / "dest", "date", pipeline.config)
    item = next(p for p in plan.partitions if p.action == "enrich")
    with pytest.raises(InputError, match=r"part-1\.parquet"):
        enrich_partition(pipeline, item, tmp_path / "dest", plan)
    assert pq.read_table(tmp_path / "dest" / "date=2026-01-02").equals(committed)
    assert staging_is_empty(tmp_path / "dest")


def test_files_outside_partition_folders_are_refused(pipeline, write_table, tmp_path: Path) -> None:
    write_table({"text": ["a"]}, "src/date=2026-01-01/part-0.parquet")
    write_table({"text": ["b"]}, "src/loose.parquet")
    with pytest.raises(InputError, match="not inside a date=VALUE folder"):
        plan_partitions(tmp_path / "src", tmp_path / "dest", "date", pipeline.config)


def test_partitions_group_by_rows_in_order(config, partitioned_source, tmp_path: Path) -> None:
    src = partitioned_source(days=5, rows=24)
    todo = plan_partitions(src, tmp_path / "dest", "date", config).by_action("enrich")
    groups = group_partitions(todo, max_rows=50)  # 24-row partitions: two per group
    assert [[item.value[-2:] for item in group] for group in groups] == [
        ["01", "02"],
        ["03", "04"],
        ["05"],
    ]
    assert [len(g) for g in group_partitions(todo, max_rows=10)] == [1] * 5  # too big: alone


def test_a_group_commits_each_partition_alone(config, partitioned_source, tmp_path: Path) -> None:
    src, dest = partitioned_source(days=3), tmp_path / "dest"
    (src / "date=2026-01-02" / "part-0.parquet").write_bytes(b"not parquet")
    plan = plan_partitions(src, dest, "date", config)
    pipeline = LocalExecutor(config)
    pipeline.setup()
    outcomes = enrich_partitions(pipeline, plan.by_action("enrich"), dest, plan)
    assert [o.manifest is not None for o in outcomes] == [True, False, True]
    assert "part-0.parquet" in str(outcomes[1].error)
    (src / "date=2026-01-02" / "part-0.parquet").unlink()
    (src / "date=2026-01-02").rmdir()
    enrich(src, tmp_path / "reference", config)
    assert assert_same_output(dest, tmp_path / "reference") == 2 * 24
    assert staging_is_empty(dest)


def test_window_mode_reuses_long_rows_and_counts_truncated_rows(
    partitioned_source, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    """Long rows in token windows: an unchanged long row reuses its pooled outputs, the
    manifest counts the rows the model saw cut, and the result equals a clean run."""
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        long_text="window",
        max_length=16,
        max_windows=2,
        window_overlap=4,
        token_stats=True,
    )
    executor = LocalExecutor(config)
    executor.setup()
    try:
        src = partitioned_source(days=1)
        first = run_all(executor, src, tmp_path / "dest")["2026-01-01"]
        table = pq.read_table(tmp_path / "dest" / "date=2026-01-01" / "part-0.parquet")
        truncated = table.column("truncated").to_pylist()
        assert first.rows_truncated == truncated.count(True) > 0
        assert max(w or 0 for w in table.column("windows").to_pylist()) == 2
        edit_rows(src / "date=2026-01-01" / "part-0.parquet", [0])
        second = run_all(executor, src, tmp_path / "dest")["2026-01-01"]
    finally:
        executor.teardown()
    assert (second.rows_inferred, second.rows_reused) == (1, 21)
    assert second.rows_truncated == 0  # the edited row is short; the long ones were reused
    enrich(src, tmp_path / "reference", config)
    assert_same_output(tmp_path / "dest", tmp_path / "reference")
