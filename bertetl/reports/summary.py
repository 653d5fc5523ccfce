"""Summaries of an enriched table with the queries in `sql/` (polars' SQL engine)."""

from __future__ import annotations

import os

import polars as pl

from bertetl.errors import InputError
from bertetl.io.read import discover
from bertetl.reports.sql import run_query
from bertetl.schema import EMBEDDING, ENRICH_ERROR, LABEL


def enriched_frame(
    dest: str | os.PathLike[str], partition_column: str | None, prefix: str = ""
) -> tuple[pl.LazyFrame, bool]:
    """The committed output under DEST (hidden and `_` files skipped), with the columns the
    queries read renamed to `partition`, `label`, `encoded` and `enrich_error`; and whether
    it has a label column (a classifier ran)."""
    files = discover(dest)
    names = pl.scan_parquet(files[0].path).collect_schema().names()
    error, label, embedding = prefix + ENRICH_ERROR, prefix + LABEL, prefix + EMBEDDING
    if error not in names:
        raise InputError(f"{dest} is not bertetl output: no {error!r} column")
    output = label if label in names else embedding
    if output not in names:
        raise InputError(f"{dest} has neither {label!r} nor {embedding!r}")
    partitions = [f.partition.get(partition_column, "") if partition_column else "" for f in files]
    frames = [
        pl.scan_parquet(f.path).select(
            pl.lit(value).alias("partition"),
            (pl.col(label) if label in names else pl.lit(None, pl.String)).alias("label"),
            pl.col(output).is_not_null().alias("encoded"),
            pl.col(error).alias("enrich_error"),
        )
        for f, value in zip(files, partitions, strict=True)
    ]
    return pl.concat(frames), label in names


def summarize(
    dest: str | os.PathLike[str], partition_column: str | None = None, prefix: str = ""
) -> dict[str, pl.DataFrame]:
    """Label counts and row accounting per partition (`sql/label_counts.sql`,
    `sql/output_table.sql`)."""
    enriched, has_labels = enriched_frame(dest, partition_column, prefix)
    result = {"rows": run_query("output_table", {"enriched": enriched})}
    if has_labels:
        result["label_counts"] = run_query("label_counts", {"enriched": enriched})
    return result
