"""Run the queries in `sql/` with polars' SQL engine.

Values from users (partition bounds, hashes) are never pasted into SQL text: they travel as
columns of a one-row `params` table that the query joins, so no value can change the query.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from typing import Any

import polars as pl

from bertetl.errors import InputError

#: The repository's `sql/` folder, installed as the package `bertetl.sql` (package data).
SQL_PACKAGE = "bertetl.sql"


def query_files() -> list[Traversable]:
    """Every installed `.sql` file."""
    return [f for f in resources.files(SQL_PACKAGE).iterdir() if f.name.endswith(".sql")]


def query_text(name: str) -> str:
    """The text of `sql/<name>.sql`, read from the installed package."""
    path = resources.files(SQL_PACKAGE) / f"{name}.sql"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read query {path}: {e}") from e


def run_query(
    name: str,
    tables: dict[str, pl.DataFrame | pl.LazyFrame],
    params: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Run `sql/<name>.sql` over `tables`; `params` becomes the one-row table `params`."""
    frames = dict(tables)
    if params is not None:
        frames["params"] = pl.DataFrame([params])
    with pl.SQLContext(frames=frames, eager=True) as context:
        return context.execute(query_text(name))
