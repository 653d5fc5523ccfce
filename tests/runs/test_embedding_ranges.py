"""`--embed-precision int8`: the ranges calibrated on a run's first window are kept in the
manifests and used for every partition, in that run and in later ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bertetl.config import EngineConfig
from bertetl.executors.local import LocalExecutor
from bertetl.io.manifest import MANIFEST_NAME, read_manifest
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import enrich_partition


def run(config: EngineConfig, src: Path, dest: Path) -> dict:
    executor = LocalExecutor(config)
    executor.setup()
    try:
        plan = plan_partitions(src, dest, "date", config)
        return {
            i.value: enrich_partition(executor, i, dest, plan) for i in plan.by_action("enrich")
        }
    finally:
        executor.teardown()


def vectors_of(dest: Path, value: str) -> np.ndarray:
    """The partition's embeddings of the rows that have one."""
    column = pq.read_table(dest / f"date={value}").column("embedding").combine_chunks()
    return np.stack(column.drop_null().to_numpy(zero_copy_only=False))


def test_ranges_are_calibrated_once_and_reused(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    from sentence_transformers.quantization import quantize_embeddings

    src = partitioned_source(days=3)
    later = tmp_path / "later"
    shutil.copytree(src, later)
    shutil.rmtree(src / "date=2026-01-03")  # the first run sees two days; the next, a third
    options = {"text_column": "text", "embed_model": str(tiny_embed_dir), "device": "cpu"}
    int8 = EngineConfig(**options, embed_precision="int8")
    dest, floats = tmp_path / "dest", tmp_path / "floats"
    first = run(int8, src, dest)
    ranges = first["2026-01-01"].embedding_ranges["embedding"]
    assert first["2026-01-02"].embedding_ranges["embedding"] == ranges
    second = run(int8, later, dest)
    assert list(second) == ["2026-01-03"]  # the others are unchanged
    assert second["2026-01-03"].embedding_ranges["embedding"] == ranges
    run(EngineConfig(**options), later, floats)
    assert "embedding_ranges" not in json.loads(
        (floats / "date=2026-01-01" / MANIFEST_NAME).read_text()
    )
    for value in ("2026-01-01", "2026-01-02", "2026-01-03"):
        stored = vectors_of(dest, value)
        expected = quantize_embeddings(
            vectors_of(floats, value), precision="int8", ranges=np.array(ranges)
        )
        assert stored.dtype == np.int8 and stored.shape == expected.shape
        difference = np.abs(stored.astype(np.int16) - expected.astype(np.int16))
        assert difference.max() <= 1 and (difference == 0).mean() > 0.99
    assert read_manifest(dest / "date=2026-01-03").embedding_ranges["embedding"] == ranges
