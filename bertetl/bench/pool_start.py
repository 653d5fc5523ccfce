"""What a tokenizer pool worker costs to start: workers that load the tokenizer themselves
(`AutoTokenizer`, which imports torch) against workers built from the parent's snapshot
(`TokenizerSnapshot`), alternated in one run. `python -m bertetl.bench.pool_start`."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bertetl.config import EngineConfig
from bertetl.engine.model_files import resolve_model_dir
from bertetl.engine.pipeline import Pipeline
from bertetl.engine.tokenize import TokenizerSnapshot
from bertetl.engine.tokenizer_pool import TokenizerPool


@dataclass
class PoolStart:
    """One pool start: wall seconds until every worker answered, and per worker (mean) its
    resident memory and the CPU seconds it spent starting."""

    wall_s: float
    worker_rss_mb: float
    worker_cpu_s: float


def _worker_figures(pid: int) -> tuple[float, float]:
    """A live process's resident MB and CPU seconds, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kb = int(next(line for line in status if line.startswith("VmRSS")).split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return rss_kb / 1024, ticks / os.sysconf("SC_CLK_TCK")


def start_pool(
    pipeline: Pipeline, processes: int, snapshots: dict[str, TokenizerSnapshot] | None
) -> PoolStart:
    """Start and close a pool of `processes` workers; what the start cost."""
    pool = TokenizerPool(Pipeline, pipeline.absolute_config(), processes, 2, snapshots)
    started = time.perf_counter()
    try:
        pool.start()
        wall = time.perf_counter() - started
        assert pool._pool is not None
        figures = [_worker_figures(pid) for pid in pool._pool._processes]
    finally:
        pool.close()
    return PoolStart(
        wall,
        statistics.mean(rss for rss, _ in figures),
        statistics.mean(cpu for _, cpu in figures),
    )


def measure(model: str, processes: int, repeats: int) -> dict[str, list[PoolStart]]:
    """Each way `repeats` times, alternated."""
    pipeline = Pipeline(EngineConfig(text_column="text", embed_model=model))
    pipeline.setup_tokenizers()
    snapshots = pipeline.tokenizer_snapshots()
    runs: dict[str, list[PoolStart]] = {"self-loaded": [], "snapshot": []}
    for _ in range(repeats):
        runs["self-loaded"].append(start_pool(pipeline, processes, None))
        runs["snapshot"].append(start_pool(pipeline, processes, snapshots))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = measure(str(resolve_model_dir(args.model)), args.processes, args.repeats)
    print("| workers | start s | worker RSS MB | worker CPU s |\n|---|---:|---:|---:|")
    for name, starts in runs.items():
        print(
            f"| {name} | {statistics.median(s.wall_s for s in starts):.2f} "
            f"| {statistics.median(s.worker_rss_mb for s in starts):.0f} "
            f"| {statistics.median(s.worker_cpu_s for s in starts):.2f} |"
        )


if __name__ == "__main__":
    main()
