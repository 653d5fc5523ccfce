"""`bertetl summary`: label counts and row accounting per partition of an enriched table."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bertetl.cli.common import Debug, help_of, user_errors
from bertetl.config import EngineConfig


def summary(
    dest: Annotated[str, typer.Argument(help="An enriched output folder (or file).")],
    partition_column: Annotated[
        str | None, typer.Option(help="Hive partition key to group by, e.g. date.")
    ] = None,
    prefix: Annotated[str, typer.Option(help=help_of(EngineConfig, "prefix"))] = "",
    debug: Debug = False,
) -> None:
    """Print label counts and row accounting per partition of an enriched table (sql/)."""
    from bertetl.reports.summary import summarize

    with user_errors(debug):
        tables = summarize(dest, partition_column, prefix)
    for name, table in tables.items():
        typer.echo(f"{name}:")
        with pl_config():
            typer.echo(str(table))


def pl_config() -> Any:
    """Print whole tables."""
    import polars as pl

    return pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True)
