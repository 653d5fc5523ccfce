"""End-to-end rate of the local and Ray executors on the same partitioned table.

Each run is `enrich(SOURCE, fresh DEST, config)` in its own process, timed around the call, so
it includes what a user's run pays inside the engine: model loading, and for Ray starting a
local Ray, its actor pools and the commits. Executors alternate within each repeat (local,
ray, then ray, local, ...) so a slow spell of a noisy machine hits both; the report gives each
run's rows/s and the paired ratio ray / local per repeat, and their median.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.bench.child import run_in_child
from bertetl.config import EngineConfig


def write_table(root: Path, rows: int, partitions: int, files_per_partition: int) -> Path:
    """The real reviews (every column), cycled to `rows`, as `root/date=…/part-K.parquet`."""
    from bertetl.bench.corpus import rotten_tomatoes

    reviews = rotten_tomatoes()
    table = reviews.take(pa.array(np.arange(rows) % reviews.num_rows))
    table = table.set_column(0, "review_id", pa.array(np.arange(rows), pa.int64()))
    pieces = np.array_split(np.arange(rows), partitions * files_per_partition)
    for number, rows_of_piece in enumerate(pieces):
        day, part = divmod(number, files_per_partition)
        folder = root / f"date=2026-11-{day + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        piece = table.slice(int(rows_of_piece[0]), len(rows_of_piece))
        pq.write_table(piece, folder / f"part-{part}.parquet", row_group_size=4096)
    return root


def _run(source: str, dest: str, config_json: str) -> tuple[int, float]:
    """Rows written and seconds of one enrich run (in its own process)."""
    from bertetl.config import EngineConfig
    from bertetl.runs.enrich import enrich

    config = EngineConfig.model_validate_json(config_json)
    started = time.perf_counter()
    report = enrich(source, dest, config)
    return report.rows, time.perf_counter() - started


def _timed(source: Path, dest: Path, config: Any) -> tuple[int, float]:
    """`_run` in a spawned process; `ChildError` when it failed."""
    return run_in_child(
        _run, str(source), str(dest), config.model_dump_json(), name=f"the {config.executor} run"
    )


def executor_bench(
    config: Any,
    executors: list[str],
    rows: int,
    partitions: int,
    files_per_partition: int,
    repeats: int,
    workdir: Path,
) -> dict[str, Any]:
    """Run each executor `repeats` times on one table; rates, paired ratios and medians."""
    source = write_table(workdir / "source", rows, partitions, files_per_partition)
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        order = executors if repeat % 2 == 0 else list(reversed(executors))
        for executor in order:
            engine = EngineConfig.model_validate({**config.model_dump(), "executor": executor})
            dest = workdir / f"dest-{executor}-{repeat}"
            written, seconds = _timed(source, dest, engine)
            runs.append(
                {
                    "executor": executor,
                    "repeat": repeat,
                    "rows": written,
                    "seconds": round(seconds, 2),
                    "rows_per_s": round(written / seconds, 1),
                }
            )
    result: dict[str, Any] = {
        "rows": rows,
        "files": partitions * files_per_partition,
        "partitions": partitions,
        "runs": runs,
        "median_rows_per_s": {
            e: statistics.median(r["rows_per_s"] for r in runs if r["executor"] == e)
            for e in executors
        },
    }
    if len(executors) == 2:
        base, other = executors
        rate = {(r["executor"], r["repeat"]): r["rows_per_s"] for r in runs}
        ratios = [round(rate[(other, i)] / rate[(base, i)], 3) for i in range(repeats)]
        result[f"ratio_{other}_to_{base}"] = ratios
        result[f"median_ratio_{other}_to_{base}"] = statistics.median(ratios)
    return result
