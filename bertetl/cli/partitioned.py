"""`bertetl backfill` and `bertetl incremental`: the partitioned flows in Prefect's local mode."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bertetl.cli.common import (
    Debug,
    StorageOption,
    build_config,
    fail,
    help_of,
    setup_logging,
    user_errors,
)
from bertetl.cli.keyed import DryRun, KeepDeleted, Key, OutputColumns
from bertetl.cli.options import (
    INDEX_METRIC,
    CostPerHour,
    Index,
    IndexMetric,
    IndexParam,
    Pushgateway,
    engine_options,
    index_spec,
    observe_options,
)
from bertetl.config import EngineConfig
from bertetl.errors import PartitionsFailedError
from bertetl.reports.drift import DriftOptions, plot_path

Source = Annotated[
    str,
    typer.Argument(
        help="Partitioned source folder (SOURCE/COL=VALUE/), s3://... URI, or a table: "
        "delta://PATH_OR_URI, iceberg://CATALOG/NAMESPACE.TABLE."
    ),
]
Dest = Annotated[
    str,
    typer.Argument(
        help="Output folder (or s3://... URI; partitions mirror the source), or a table: "
        "delta://PATH_OR_URI, iceberg://CATALOG/NAMESPACE.TABLE (one commit per partition)."
    ),
]
PartitionColumn = Annotated[str, typer.Option(help="Hive partition key, e.g. date.")]
OptionalPartitionColumn = Annotated[
    str | None, typer.Option(help="Hive partition key, e.g. date (not needed with --key).")
]
ReportPath = Annotated[
    Path | None,
    typer.Option(help="Also write the run's counts (totals and per partition or file) as JSON."),
]
Start = Annotated[
    str | None, typer.Option(help="First partition value (inclusive; compared as strings).")
]
End = Annotated[
    str | None, typer.Option(help="Last partition value (inclusive; compared as strings).")
]
Reuse = Annotated[
    bool, typer.Option(help="Rows with unchanged text take their earlier outputs (same model).")
]
Force = Annotated[
    bool,
    typer.Option(help="Re-enrich partitions even when unchanged, every row through the model."),
]
Retries = Annotated[int, typer.Option(help="Retries of a partition on transient I/O errors.")]
OverwriteForeign = Annotated[
    bool,
    typer.Option(
        help="Replace a table DEST that bertetl did not write (it holds rows and no bertetl "
        "commit; refused without this). Its rows stay only in the table's history."
    ),
]

#: The drift options (also `bertetl summary`'s): `--drift-` + the `DriftOptions` field, with
#: its default and help.
DRIFT = DriftOptions()
DriftWindow = Annotated[int, typer.Option(help=help_of(DriftOptions, "window"))]
DriftJsThreshold = Annotated[float, typer.Option(help=help_of(DriftOptions, "js_threshold"))]
DriftCosineThreshold = Annotated[
    float, typer.Option(help=help_of(DriftOptions, "cosine_threshold"))
]


def drift_options(
    window: int, js_threshold: float, cosine_threshold: float, debug: bool
) -> DriftOptions:
    """The validated `DriftOptions`; a bad value is one line naming its option, exit code 2."""
    from pydantic import ValidationError

    try:
        return DriftOptions(
            window=window, js_threshold=js_threshold, cosine_threshold=cosine_threshold
        )
    except ValidationError as e:
        first = e.errors()[0]
        name = "--drift-" + str(first["loc"][0]).replace("_", "-")
        fail(f"{name}: {first['msg']}", debug, code=2)


@engine_options(exclude=("workers",))
def backfill(
    source: Source,
    dest: Dest,
    partition_column: PartitionColumn,
    engine: EngineConfig,
    start: Start = None,
    end: End = None,
    reuse: Reuse = True,
    force: Force = False,
    retries: Retries = 3,
    drift_window: DriftWindow = DRIFT.window,
    drift_js_threshold: DriftJsThreshold = DRIFT.js_threshold,
    drift_cosine_threshold: DriftCosineThreshold = DRIFT.cosine_threshold,
    storage_option: StorageOption = None,
    overwrite_foreign: OverwriteForeign = False,
    dry_run: DryRun = False,
    report: ReportPath = None,
    pushgateway: Pushgateway = None,
    cost_per_hour: CostPerHour = None,
    index: Index = None,
    index_param: IndexParam = None,
    index_metric: IndexMetric = INDEX_METRIC,
    debug: Debug = False,
) -> None:
    """Enrich the partitions of SOURCE between --start and --end into DEST (Prefect flow).

    Each partition is committed atomically with a `_manifest.json`; a partition whose
    manifest matches its current input, model and config is skipped, so a rerun after a
    failure or a kill finishes what is missing and duplicates nothing. At the end, each
    partition in range is compared with the ones before it (drift): partitions over a
    threshold are named, never failed, and the plot goes to DEST/.bertetl-reports/drift.png.
    """
    from bertetl.flows.params import BackfillParams

    setup_logging(debug)
    params = build_config(
        BackfillParams,
        debug,
        **_common(source, dest, partition_column, engine, reuse, force, retries),
        drift=drift_options(drift_window, drift_js_threshold, drift_cosine_threshold, debug),
        storage_options=_storage_options(storage_option, debug),
        overwrite_foreign=overwrite_foreign,
        observe=observe_options(pushgateway, cost_per_hour, debug),
        index=index_spec(index, index_param, index_metric, debug),
        start=start,
        end=end,
    )
    _check_report(report, source, dest, debug)
    if dry_run:
        _dry_run("backfill", params, report, debug)
        return
    _run("backfill", params, debug, report)


@engine_options(exclude=("workers",))
def incremental(
    source: Source,
    dest: Dest,
    engine: EngineConfig,
    partition_column: OptionalPartitionColumn = None,
    key: Key = None,
    keep_deleted: KeepDeleted = False,
    output_columns: OutputColumns = "all",
    dry_run: DryRun = False,
    report: ReportPath = None,
    reuse: Reuse = True,
    force: Force = False,
    retries: Retries = 3,
    drift_window: DriftWindow = DRIFT.window,
    drift_js_threshold: DriftJsThreshold = DRIFT.js_threshold,
    drift_cosine_threshold: DriftCosineThreshold = DRIFT.cosine_threshold,
    storage_option: StorageOption = None,
    overwrite_foreign: OverwriteForeign = False,
    pushgateway: Pushgateway = None,
    cost_per_hour: CostPerHour = None,
    index: Index = None,
    index_param: IndexParam = None,
    index_metric: IndexMetric = INDEX_METRIC,
    debug: Debug = False,
) -> None:
    """Enrich every new or changed partition of SOURCE into DEST (the nightly run).

    Inside a changed partition, rows whose text is unchanged (same model and config) reuse
    their earlier outputs, so editing 3 rows costs 3 inferences; each partition's manifest
    records rows_inferred and rows_reused. At the end, every partition is compared with the
    ones before it (drift), as `backfill` does.

    With --key (no --partition-column needed), rows are matched by key instead: only new and
    changed text is inferred (each distinct text once), unchanged rows keep their outputs
    wherever they moved, and keys gone from SOURCE are deleted (docs/KEYED.md).
    """
    from bertetl.flows.params import IncrementalParams

    setup_logging(debug)
    with user_errors(debug):
        keyed = _keyed(key, keep_deleted, output_columns)
    params = build_config(
        IncrementalParams,
        debug,
        **_common(source, dest, partition_column, engine, reuse, force, retries),
        drift=drift_options(drift_window, drift_js_threshold, drift_cosine_threshold, debug),
        storage_options=_storage_options(storage_option, debug),
        overwrite_foreign=overwrite_foreign,
        key=keyed.key if keyed is not None else None,
        keep_deleted=keep_deleted,
        output_columns=output_columns,
        observe=observe_options(pushgateway, cost_per_hour, debug),
        index=index_spec(index, index_param, index_metric, debug),
    )
    _check_report(report, source, dest, debug)
    if keyed is not None:
        _run_keyed(params, keyed, dry_run, report, debug)
        return
    if dry_run:
        _dry_run("incremental", params, report, debug)
        return
    _run("incremental", params, debug, report)


def _check_report(report: Path | None, source: str, dest: str, debug: bool) -> None:
    if report is not None:
        from bertetl.cli.enrich import check_report_path

        with user_errors(debug):
            check_report_path(report, source, dest)


def _dry_run(kind: str, params: Any, report: Path | None, debug: bool) -> None:
    """The partitions the run would enrich and skip, no model work (`dry_run_partitions`)."""
    from bertetl.cli.keyed import finish
    from bertetl.runs.dry_run import dry_run_partitions

    with user_errors(debug):
        result = dry_run_partitions(
            params.source,
            params.dest,
            params.partition_column,
            params.engine,
            getattr(params, "start", None),
            getattr(params, "end", None),
            params.force,
            params.storage_options,
        )
        for row in result.files:
            typer.echo(
                f"  {row['partition']}: {row['action']} ({row['rows_in']:,} rows): {row['reason']}"
            )
        finish(kind, result, report)


def _keyed(key: str | None, keep_deleted: bool, output_columns: str) -> Any:
    from bertetl.cli.keyed import keyed_options

    return keyed_options(key, keep_deleted, output_columns)


def _run_keyed(params: Any, keyed: Any, dry_run: bool, report: Path | None, debug: bool) -> None:
    """A keyed run (or a dry run): through the Prefect flow, or, for a dry run, at once."""
    from bertetl.cli.keyed import finish

    with user_errors(debug):
        if dry_run:  # the flow's task itself, without Prefect: no model work to track
            from bertetl.flows.keyed import enrich_by_key_task

            finish("incremental", enrich_by_key_task.fn(params, dry_run=True), report)
            return
        from bertetl.flows.keyed import keyed_flow
        from bertetl.flows.local import local_api

        with local_api():
            result = keyed_flow(params)
        finish("incremental", result, report)


def _storage_options(pairs: list[str] | None, debug: bool) -> dict[str, str]:
    """`--storage-option KEY=VALUE`s as a dict; a malformed one is one line, exit code 2."""
    from bertetl.io.stores.locations import StorageError, parse_storage_options

    try:
        return parse_storage_options(pairs)
    except StorageError as e:
        fail(str(e), debug, code=2)


def _common(
    source: str,
    dest: str,
    partition_column: str,
    engine: EngineConfig,
    reuse: bool,
    force: bool,
    retries: int,
) -> dict[str, Any]:
    from bertetl.flows.params import RunOptions

    return {
        "source": source,
        "dest": dest,
        "partition_column": partition_column,
        "engine": engine,
        "reuse": reuse,
        "force": force,
        "run": RunOptions(retries=retries, progress_bar=sys.stderr.isatty()),
    }


def _run(kind: str, params: Any, debug: bool, report: Path | None = None) -> None:
    """Run the flow in Prefect's local mode and print its summary.

    Every cheap check comes first, before any server starts or model loads, so a refused
    run never waits for Prefect's start-up: SOURCE, DEST and the range (paths, partition
    column, foreign files: `check_partitioned_run`), the executor and model folders, and
    DEST's lock."""
    with user_errors(debug):
        from bertetl.executors import make_executor
        from bertetl.flows.local import local_api
        from bertetl.io.destinations import parse_run
        from bertetl.runs.enrich import check_storage
        from bertetl.runs.staged import check_partitioned_run

        source, dest = parse_run(
            params.source,
            params.dest,
            params.storage_options,
            params.overwrite_foreign,
            params.index,
        )
        check_partitioned_run(
            source,
            dest,
            params.partition_column,
            getattr(params, "start", None),
            getattr(params, "end", None),
        )
        # a missing executor (no Ray) or model folder fails here, and an executor that
        # cannot reach object storage
        check_storage(make_executor(params.engine), source, dest)
        if kind == "backfill":
            from bertetl.flows.partitioned import backfill_flow as flow_fn
        else:
            from bertetl.flows.partitioned import incremental_flow as flow_fn
        started = time.perf_counter()
        try:  # DEST's lock: refused at once, before any server starts, if another run holds
            # it; then held through the flow, so no run can start on DEST in between
            with dest.holding(), local_api():
                rows = flow_fn(params)
        except PartitionsFailedError as e:
            print_summary(kind, e.rows, params.dest)
            print_drift(e.rows, params.partition_column, dest)
            _write_report(report, params.dest, e.rows, started)
            raise
        print_summary(kind, rows, params.dest)
        print_drift(rows, params.partition_column, dest)
        _write_report(report, params.dest, rows, started)


def _write_report(
    report: Path | None, dest: str, rows: list[dict[str, Any]], started: float
) -> None:
    """`--report`: the run's totals and each partition's row, as JSON."""
    if report is None:
        return
    from bertetl.cli.common import write_json
    from bertetl.runs.dry_run import partition_report

    write_json(report, partition_report(dest, rows, time.perf_counter() - started))


def print_summary(kind: str, rows: list[dict[str, Any]], dest: str) -> None:
    """One line: partitions committed, unchanged and failed; rows written, by origin; then
    one line per failed partition with its cause (the run summary of this run)."""
    committed = [r for r in rows if r["status"] == "committed"]
    failed = sum(r["status"] == "failed" for r in rows)
    typer.echo(
        f"{kind}: {len(committed)} partition(s) committed, "
        f"{sum(r['status'] == 'skipped' for r in rows)} unchanged, {failed} failed; "
        f"{sum(r['rows'] for r in committed)} rows written "
        f"({sum(r['inferred'] for r in committed)} inferred, "
        f"{sum(r['reused'] for r in committed)} reused, "
        f"{sum(r['failed'] for r in committed)} with enrich_error, "
        f"{sum(r.get('truncated', 0) for r in committed)} truncated) into {dest}"
    )
    for row in rows:
        if row["status"] == "failed":
            typer.echo(f"  failed: {row['partition']}: {row['reason']}")


def print_drift(rows: list[dict[str, Any]], column: str, dest: Any) -> None:
    """One line: the partitions whose drift is flagged (the flow logged each), and the plot."""
    if all(r.get("drift") is None for r in rows):
        typer.echo("drift: not computed (see the warning above)")
        return
    flagged = [f"{column}={r['partition']} ({r['drift']})" for r in rows if r.get("drift")]
    plot = plot_path(dest)
    where = f"; plot: {plot}" if plot is not None and plot.exists() else ""
    if flagged:
        typer.echo(f"drift: {len(flagged)} partition(s) to look at: {', '.join(flagged)}{where}")
    else:
        typer.echo(f"drift: no partition over the thresholds{where}")
