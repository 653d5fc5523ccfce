"""Disk full or a failing writer mid-commit: nothing partial is visible and the previously
committed version of the partition (or file) stays intact."""

from __future__ import annotations

import errno
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import bertetl.io.commit as commit
import bertetl.io.write as write
from bertetl.config import EngineConfig
from bertetl.errors import CommitError
from bertetl.executors.local import LocalExecutor
from bertetl.runs.enrich import enrich
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import enrich_partition
from tests.outputs import data_files, staging_is_empty


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


@pytest.fixture
def committed(tiny_embed_dir: Path, partitioned_source, tmp_path: Path):
    """A DEST with two committed partitions, and a pipeline to re-enrich them."""
    src, dest = partitioned_source(days=2, files_per_day=2), tmp_path / "dest"
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    pipeline = LocalExecutor(config)
    pipeline.setup()
    plan = plan_partitions(src, dest, "date", config)
    for item in plan.partitions:
        enrich_partition(pipeline, item, dest, plan)
    before = {f: pq.read_table(dest / f) for f in data_files(dest)}
    yield src, dest, pipeline, before
    pipeline.teardown()


def _force_plan(src: Path, dest: Path, pipeline: LocalExecutor):
    plan = plan_partitions(src, dest, "date", pipeline.config, force=True)
    return plan, plan.partitions[0]


@pytest.mark.parametrize("failing_call", [1, 2])  # first file, second file
def test_writer_failing_mid_partition_keeps_the_old_partition(
    committed, monkeypatch, failing_call: int
) -> None:
    src, dest, pipeline, before = committed
    real_write = write.ParquetSink.write
    calls = {"n": 0}

    def write_until_disk_full(self, batch):
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise CommitError(f"cannot write output {self.temp_path}: disk full (injected)")
        real_write(self, batch)

    monkeypatch.setattr(write.ParquetSink, "write", write_until_disk_full)
    plan, item = _force_plan(src, dest, pipeline)
    with pytest.raises(CommitError, match="disk full"):
        enrich_partition(pipeline, item, dest, plan)
    assert {f: pq.read_table(dest / f) for f in data_files(dest)}.keys() == before.keys()
    for file, table in before.items():
        assert pq.read_table(dest / file).equals(table)
    assert staging_is_empty(dest)


@pytest.mark.parametrize("step", ["fsync", "exchange", "rename-aside"])
def test_failing_swap_keeps_the_old_partition(committed, monkeypatch, step: str) -> None:
    src, dest, pipeline, before = committed
    if step == "fsync":
        monkeypatch.setattr(commit, "fsync_dir", _disk_full)
    elif step == "exchange":
        monkeypatch.setattr(commit, "_exchange", _disk_full)
    else:
        monkeypatch.setattr(commit, "_exchange", lambda a, b: False)
        monkeypatch.setattr(commit.os, "rename", _disk_full)
    plan, item = _force_plan(src, dest, pipeline)
    with pytest.raises(CommitError, match="No space left"):
        enrich_partition(pipeline, item, dest, plan)
    for file, table in before.items():
        assert pq.read_table(dest / file).equals(table)
    assert (dest / "date=2026-01-01" / "_manifest.json").exists()


def test_failing_file_commit_keeps_the_old_file(
    tiny_embed_dir: Path, write_table, tmp_path: Path, monkeypatch
) -> None:
    src = write_table({"text": ["one", "two"]})
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    enrich(src, tmp_path / "out", config)
    old = pq.read_table(tmp_path / "out" / src.name)
    write_table({"text": ["three", "four", "five"]})
    monkeypatch.setattr(write.os, "fsync", _disk_full)
    with pytest.raises(CommitError, match="No space left"):
        enrich(src, tmp_path / "out", config)
    assert pq.read_table(tmp_path / "out" / src.name).equals(old)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name != commit.LOCK_NAME] == [
        src.name
    ]
