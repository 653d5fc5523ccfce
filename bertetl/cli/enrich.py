"""`bertetl enrich`: one SOURCE into one DEST, in this process (no Prefect)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated

import typer

from bertetl.cli.common import Debug, StorageOption, setup_logging, user_errors
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
from bertetl.errors import FilesFailedError
from bertetl.results import EnrichReport

Source = Annotated[
    str,
    typer.Argument(
        help="Parquet file, directory (hive folders kept), or glob; or s3://... URI; or a "
        "table, read at one version: delta://PATH_OR_URI, iceberg://CATALOG/NAMESPACE.TABLE."
    ),
]
Dest = Annotated[
    str,
    typer.Argument(
        help="Output directory (or .parquet file for one input file); or s3://...; or an "
        "unpartitioned table, replaced whole in one commit: delta://..., iceberg://..."
    ),
]
ReportPath = Annotated[
    Path | None, typer.Option(help="Also write the run's report (counters, files) as JSON.")
]


@engine_options(exclude=("ray_group_rows",))
def enrich(
    source: Source,
    dest: Dest,
    engine: EngineConfig,
    report: ReportPath = None,
    storage_option: StorageOption = None,
    overwrite_foreign: Annotated[
        bool,
        typer.Option(
            help="Replace a table DEST that bertetl did not write (it holds rows and no "
            "bertetl commit; refused without this). Its rows stay only in the table's history."
        ),
    ] = False,
    key: Key = None,
    keep_deleted: KeepDeleted = False,
    output_columns: OutputColumns = "all",
    dry_run: DryRun = False,
    pushgateway: Pushgateway = None,
    cost_per_hour: CostPerHour = None,
    index: Index = None,
    index_param: IndexParam = None,
    index_metric: IndexMetric = INDEX_METRIC,
    debug: Debug = False,
) -> None:
    """Add embedding and/or classification columns to every row of SOURCE, written to DEST.

    Output keeps every input column (values, types, row order) and appends `embedding`,
    `label`, `score` (`scores`, `labels` when asked / multi-label) and `enrich_error`, which
    says why a row was not encoded (null, empty or whitespace-only text). Texts longer than
    the model's limit are truncated. Each output file is committed atomically. With --key,
    a rerun is incremental by key (see `bertetl incremental --key`).
    """
    setup_logging(debug)
    from bertetl.cli.keyed import finish, keyed_options
    from bertetl.io.stores.locations import parse_storage_options, resolve_run
    from bertetl.observe import observe_run
    from bertetl.runs.enrich import enrich as run

    observe = observe_options(pushgateway, cost_per_hour, debug)
    spec = index_spec(index, index_param, index_metric, debug)
    with user_errors(debug):
        if report is not None:
            check_report_path(report, source, dest)
        keyed = keyed_options(key, keep_deleted, output_columns)
        options = parse_storage_options(storage_option)
        if dry_run:
            from bertetl.runs.keyed import run_keyed

            planned = run_keyed(
                source,
                dest,
                engine,
                keyed,
                dry_run=True,
                storage_options=options,  # type: ignore[arg-type]
            )
            finish("enrich", planned, report)
            return
        places = resolve_run(source, dest, options)
        with observe_run("enrich", *places, engine, observe) as observer:
            if keyed is not None:
                from bertetl.runs.keyed import run_keyed

                by_key = run_keyed(
                    source,
                    dest,
                    engine,
                    keyed,  # type: ignore[arg-type]
                    storage_options=options,
                    overwrite_foreign=overwrite_foreign,
                    index=spec,
                )
                observer.keyed(by_key)
                finish("enrich", by_key, report)
                return
            try:
                result = run(
                    source,
                    dest,
                    engine,
                    storage_options=options,
                    overwrite_foreign=overwrite_foreign,
                    index=spec,
                )
            except FilesFailedError as e:
                if e.report is not None:
                    observer.files(e.report)
                    print_report(e.report, dest, report, observe.cost_per_hour)
                raise
            observer.files(result)
        print_report(result, dest, report, observe.cost_per_hour)


def print_report(
    result: EnrichReport, dest: str, report_path: Path | None, cost_per_hour: float | None = None
) -> None:
    """One line of totals (and the estimated cost at `cost_per_hour`); the whole report as
    JSON into `report_path` when given."""
    from bertetl.observe import estimate_cost

    done = [f for f in result.files if f.error is None]
    cost = estimate_cost(result.device_seconds, cost_per_hour)
    typer.echo(
        f"enriched {result.rows} rows from {len(done)} file(s) in {result.seconds:.1f}s "
        f"({result.rows_per_second:.0f} rows/s) into {dest}; "
        f"{result.rows_failed} row(s) with enrich_error, {result.truncated_rows} truncated"
        + ("" if cost is None else f"; estimated cost {cost:.4f}")
    )
    if report_path is not None:
        from bertetl.cli.common import write_json

        figures = result.to_dict()
        if cost is not None:
            figures["estimated_cost"] = cost
        write_json(report_path, figures)


#: The keys at the top of every run report (`EnrichReport.to_dict`).
REPORT_KEYS = frozenset({"rows", "files", "stages"})


def check_report_path(report: Path, source: str, dest: str) -> None:
    """Refuse, before the run, a `--report` path that is a folder or lies in SOURCE or DEST
    (it would overwrite an input or an output, or land among them as a stray file)."""
    from bertetl.errors import InputError
    from bertetl.io.paths import check_output_file
    from bertetl.io.stores.locations import is_table_uri, is_uri, parse_table

    path = report.resolve()
    if path.is_dir():
        raise InputError(f"--report {report} is a folder; give the path of a JSON file")
    for label, given in (("SOURCE", source), ("DEST", dest)):
        if is_table_uri(given):  # a local table's folder holds its log: not a report's place
            table = parse_table(given)
            if not table.local:
                continue
            given = table.address
        elif is_uri(given):
            continue  # the report is a local file
        if glob.has_magic(given):  # a glob SOURCE: the report must not be one of its files
            inside = path in {Path(f).resolve() for f in glob.glob(given, recursive=True)}
        else:
            root = Path(given).resolve()
            inside = path == root or root in path.parents
        if inside:
            raise InputError(
                f"--report {report} lies in {label} {given}; a run writes neither into its "
                "input nor among its outputs: give a path outside both"
            )
    # nor over anything but an earlier report (the keys `EnrichReport.to_dict` writes)
    check_output_file(report, "--report", makes_folder=True, keys=REPORT_KEYS)
