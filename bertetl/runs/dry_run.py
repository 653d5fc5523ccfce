"""`--dry-run` and the counts of partitioned runs without a key: what `backfill` and
`incremental` would enrich and skip, per partition, from the plan alone (no model work)."""

from __future__ import annotations

import time
from typing import Any

from bertetl.config import EngineConfig
from bertetl.io.destinations import parse_run
from bertetl.runs.keyed.enrich import KeyedReport
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import check_partitioned_run


def dry_run_partitions(
    source: str,
    dest: str,
    column: str,
    config: EngineConfig,
    start: str | None = None,
    end: str | None = None,
    force: bool = False,
    storage_options: dict[str, str] | None = None,
) -> KeyedReport:
    """The partitions a run would enrich (their rows counted as inferred: rows reused inside
    a changed partition are known only once it is read) and skip (reused)."""
    started = time.perf_counter()
    resolved, destination = parse_run(source, dest, storage_options)
    partitions = check_partitioned_run(resolved, destination, column, start, end)
    plan = plan_partitions(
        resolved, destination.place, column, config, start, end, force, partitions=partitions
    )
    report = KeyedReport(str(destination.uri), dry_run=True)
    for item in plan.partitions:
        rows = item.rows if item.action == "enrich" else 0
        report.files.append(
            {
                "partition": item.value,
                "action": item.action,
                "reason": item.reason,
                "rows_in": item.rows,
                "rows_inferred": rows,
            }
        )
    report.count_planned()
    report.estimate_from = "rows of the partitions to enrich (rows reused inside them not known)"
    report.seconds = time.perf_counter() - started
    return report


def partition_report(dest: str, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """A partitioned run's `--report`: the totals at the top, then each partition's row."""
    committed = [r for r in rows if r["status"] == "committed"]
    written = sum(r["rows"] for r in committed)
    return {
        "rows_in": sum(r.get("rows", 0) for r in rows),
        "rows_inferred": sum(r["inferred"] for r in committed),
        "rows_reused": sum(r["reused"] for r in committed),
        "rows_deduplicated": 0,
        "rows_deleted": 0,
        "rows_written": written,
        "rows_failed": sum(r["failed"] for r in committed),
        "rows": written,
        "seconds": round(seconds, 3),
        "dest": dest,
        "stages": {},
        "files": rows,
    }
