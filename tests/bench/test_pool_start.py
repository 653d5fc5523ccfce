"""`python -m bertetl.bench.pool_start`: both ways of starting pool workers, measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertetl.bench.pool_start import measure


@pytest.mark.slow  # spawns two tokenizer processes
def test_snapshot_workers_start_without_torchs_memory(tiny_embed_dir: Path) -> None:
    runs = measure(str(tiny_embed_dir), processes=1, repeats=1)
    assert set(runs) == {"self-loaded", "snapshot"}
    [loaded], [snapshot] = runs["self-loaded"], runs["snapshot"]
    assert all(s.wall_s > 0 and s.worker_cpu_s > 0 for s in (loaded, snapshot))
    # torch's libraries alone are over 100 MB resident in a worker that imports it
    assert snapshot.worker_rss_mb < loaded.worker_rss_mb - 100
