"""`bertetl bench executors`: each run in its own process, its failure reported, not awaited."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bertetl.bench.child import ChildError
from bertetl.bench.executors import _timed, executor_bench
from bertetl.config import EngineConfig


@pytest.mark.slow  # a spawned end-to-end run
def test_executor_bench_runs_each_executor_in_its_own_process(
    tiny_embed_dir: Path, tmp_path: Path
) -> None:
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), device="cpu")
    result = executor_bench(config, ["local"], 30, 2, 1, 1, tmp_path)
    [run] = result["runs"]
    assert (run["executor"], run["rows"]) == ("local", 30) and run["rows_per_s"] > 0
    written = pq.read_table(tmp_path / "dest-local-0", columns=["review_id", "embedding"])
    assert sorted(written.column("review_id").to_pylist()) == list(range(30))


def test_a_failed_run_is_its_error(tiny_embed_dir: Path, tmp_path: Path) -> None:
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), device="cpu")
    with pytest.raises(ChildError, match=r"^InputError: .*no-such-source"):
        _timed(tmp_path / "no-such-source", tmp_path / "dest", config)
