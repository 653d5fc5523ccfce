"""`bertetl summary`: label counts and row accounting per partition of an enriched table."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bertetl.cli.common import Debug, StorageOption, fail, help_of, user_errors
from bertetl.cli.options import CostPerHour
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
    cost_per_hour: CostPerHour = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the same figures as one JSON object.")
    ] = False,
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
        cost = run_cost(where, partition_column, cost_per_hour)
    if as_json:
        raise typer.Exit(print_json(tables, drift, cost))
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
    print_cost(cost)
    if drift.partitions or (damaged is not None and left_out):
        typer.echo(f"drift ({drift.describe()}):")
        with pl_config():
            typer.echo(
                str(drift.frame().drop("reason").with_columns(pl.selectors.float().round(4)))
            )
        if damaged is not None and left_out:
            typer.echo(f"  {left_out} damaged partition(s) left out (their outputs do not verify)")
        print_flagged(drift.lines())
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


def run_cost(where: Any, column: str | None, cost_per_hour: float | None) -> list[dict[str, Any]]:
    """Rows, tokens and device-seconds per committed partition (from its manifest), with a
    total and the estimate at `cost_per_hour`; empty where DEST holds no manifest."""
    from bertetl.io.destinations import as_destination
    from bertetl.observe.cost import manifests_cost

    manifests = as_destination(where).committed_manifests(column)
    return manifests_cost(
        [(value, manifests[value][1]) for value in sorted(manifests)], cost_per_hour
    )


def print_flagged(flagged: list[str]) -> None:
    """The partitions to look at: those over a drift threshold."""
    if not flagged:
        typer.echo("look at: none (every partition is within the drift thresholds)")
    else:
        typer.echo(f"look at: {len(flagged)} partition(s) over a drift threshold:")
        for line in flagged:
            typer.echo(f"  {line}")


def print_cost(cost: list[dict[str, Any]]) -> None:
    """The cost table, when DEST has manifests."""
    import polars as pl

    if cost:
        typer.echo("cost (rows, tokens and device-seconds of the run that committed each):")
        with pl_config():
            typer.echo(str(pl.DataFrame(cost)))


def print_json(tables: dict[str, Any], drift: Any, cost: list[dict[str, Any]]) -> int:
    """Every table (damaged and foreign files too), the drift per partition and the cost, as
    one JSON object on stdout: `bertetl summary --json` for other tools. Returns the exit
    status, as the tables' printout has it (3: some outputs are damaged)."""
    import json

    figures: dict[str, Any] = {name: table.to_dicts() for name, table in tables.items()}
    figures["drift"] = drift.frame().to_dicts() if drift.partitions else []
    figures["cost"] = cost
    typer.echo(json.dumps(figures, indent=2, default=str))
    return DAMAGED_EXIT if "damaged" in tables else 0


def pl_config() -> Any:
    """Print whole tables."""
    import polars as pl

    return pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True)
