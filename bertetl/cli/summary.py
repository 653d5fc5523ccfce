"""`bertetl summary`: label counts and row accounting per partition of an enriched table."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bertetl.cli.common import Debug, StorageOption, fail, help_of, user_errors
from bertetl.cli.partitioned import (
    DRIFT,
    DriftCosineThreshold,
    DriftJsThreshold,
    DriftWindow,
    drift_options,
)
from bertetl.config import EngineConfig

#: Exit status when some outputs are damaged (the tables of the others are still printed).
DAMAGED_EXIT = 3


def summary(
    dest: Annotated[
        str, typer.Argument(help="An enriched output folder (or file), or s3://... URI.")
    ],
    partition_column: Annotated[
        str | None, typer.Option(help="Hive partition key to group by, e.g. date.")
    ] = None,
    prefix: Annotated[str, typer.Option(help=help_of(EngineConfig, "prefix"))] = "",
    drift_window: DriftWindow = DRIFT.window,
    drift_js_threshold: DriftJsThreshold = DRIFT.js_threshold,
    drift_cosine_threshold: DriftCosineThreshold = DRIFT.cosine_threshold,
    storage_option: StorageOption = None,
    debug: Debug = False,
) -> None:
    """Print label counts and row accounting per partition of an enriched table (sql/).

    Where DEST has `_manifest.json` files (backfill / incremental output), each partition's
    outputs are checked against its manifest first, and only those that verify are counted.
    Missing, truncated, changed or unreadable outputs are listed under `damaged`, one line
    per file. Then the drift per partition (from the manifests, as backfill and incremental
    report it) and the partitions to look at; drift never changes the exit status.

    Exit status: 0 when every output was read; 3 when some are damaged (`bertetl
    incremental` redoes those partitions, `bertetl enrich` rewrites its outputs); 1 on an
    error (one line on stderr); 2 for a bad option.
    """
    import dataclasses

    import polars as pl

    from bertetl.io.stores.locations import parse_storage_options, resolve_run
    from bertetl.reports.drift import drift_report
    from bertetl.reports.summary import summarize

    options = drift_options(drift_window, drift_js_threshold, drift_cosine_threshold, debug)
    left_out = 0
    with user_errors(debug):
        storage = parse_storage_options(storage_option)
        where, _ = resolve_run(dest, dest, storage)
        try:
            tables = summarize(where, partition_column, prefix)
        except pl.exceptions.PolarsError as e:
            fail(f"cannot summarize {dest}: {type(e).__name__}: {e}", debug)
        drift = drift_report(where, partition_column, options, prefix)
    damaged = tables.pop("damaged", None)
    foreign = tables.pop("foreign", None)
    if damaged is not None and drift.partitions:  # a damaged partition's drift is not shown
        folders = set(damaged["folder"].to_list())
        kept = [p for p in drift.partitions if f"{drift.column}={p.partition}" not in folders]
        left_out = len(drift.partitions) - len(kept)
        drift = dataclasses.replace(drift, partitions=kept)
    for name, table in tables.items():
        typer.echo(f"{name}:")
        with pl_config():
            typer.echo(str(table))
    if drift.partitions or (damaged is not None and left_out):
        typer.echo(f"drift ({drift.describe()}):")
        with pl_config():
            typer.echo(
                str(drift.frame().drop("reason").with_columns(pl.selectors.float().round(4)))
            )
        if damaged is not None and left_out:
            typer.echo(f"  {left_out} damaged partition(s) left out (their outputs do not verify)")
        flagged = drift.lines()
        if not flagged:
            typer.echo("look at: none (every partition is within the drift thresholds)")
        else:
            typer.echo(f"look at: {len(flagged)} partition(s) over a drift threshold:")
            for line in flagged:
                typer.echo(f"  {line}")
    if foreign is not None:
        typer.echo("not bertetl output (left out, not counted above):")
        for file, problem in foreign.select("file", "problem").iter_rows():
            typer.echo(f"  {file}: {problem}")
    if damaged is not None:
        typer.echo("damaged (not counted above):")
        for file, problem in damaged.select("file", "problem").iter_rows():
            typer.echo(f"  {file}: {problem}")
        typer.echo(
            f"error: {damaged.height} damaged output file(s) in "
            f"{damaged['folder'].n_unique()} folder(s) of {dest}; rerun the command that wrote "
            "them (`bertetl incremental` redoes damaged partitions)",
            err=True,
        )
        raise typer.Exit(DAMAGED_EXIT)


def pl_config() -> Any:
    """Print whole tables."""
    import polars as pl

    return pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True)
