"""Summaries of an enriched table with the queries in `sql/` (polars' SQL engine).

The files are the truth, a manifest is a claim: where DEST has `_manifest.json` files (the
output of `bertetl backfill` / `incremental`), each partition's outputs are verified against
its manifest first and only those that verify are read; missing, truncated or changed ones
are reported as damaged. Files a manifest does not list are left out. Without manifests (the
output of `bertetl enrich`), every data file is read, and a file that cannot be read is
reported as damaged rather than failing the summary.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath, PurePosixPath

import polars as pl
import pyarrow as pa

from bertetl.errors import InputError
from bertetl.io.destinations import as_destination
from bertetl.io.read import SourceFile, open_parquet
from bertetl.io.stores.locations import Location, TableRef
from bertetl.io.verify import DamagedFile, _damaged_file, _first_line
from bertetl.reports.sql import run_query
from bertetl.schema import EMBEDDING, ENRICH_ERROR, LABEL

#: Errors of reading a damaged Parquet file, from pyarrow, polars or the OS.
READ_ERRORS = (pa.ArrowException, pl.exceptions.PolarsError, OSError)
#: How a readable Parquet file without bertetl's columns is described.
NOT_OUTPUT = "not bertetl output"


def _file_frame(
    file: SourceFile, partition_column: str | None, prefix: str
) -> tuple[pl.LazyFrame | None, str, bool]:
    """One file's rows with the columns the queries read renamed (`partition`, `label`,
    `encoded`, `enrich_error`); else None and why; and whether it has a label column."""
    error, label, embedding = prefix + ENRICH_ERROR, prefix + LABEL, prefix + EMBEDDING
    try:
        if file.filesystem is not None:  # an object store: pyarrow reads it, polars queries
            parquet = open_parquet(file.location)
            names = parquet.schema_arrow.names
            wanted = [n for n in (error, label, embedding) if n in names]
            scan = pl.from_arrow(parquet.read(columns=wanted)).lazy()  # type: ignore[union-attr]
        else:
            scan = pl.scan_parquet(file.path)
            names = scan.collect_schema().names()
    except READ_ERRORS as e:
        return None, f"unreadable ({_first_line(e)})", False
    if error not in names:
        return None, f"{NOT_OUTPUT}: no {error!r} column", False
    output = label if label in names else embedding
    if output not in names:
        return None, f"{NOT_OUTPUT}: neither {label!r} nor {embedding!r}", False
    value = file.partition.get(partition_column, "") if partition_column else ""
    frame = scan.select(
        pl.lit(value).alias("partition"),
        (pl.col(label) if label in names else pl.lit(None, pl.String)).alias("label"),
        pl.col(output).is_not_null().alias("encoded"),
        pl.col(error).alias("enrich_error"),
    )
    return frame, "", label in names


def _queries(frames: list[pl.LazyFrame], has_labels: bool) -> dict[str, pl.DataFrame]:
    enriched = pl.concat(frames)
    result = {"rows": run_query("output_table", {"enriched": enriched})}
    if has_labels:
        result["label_counts"] = run_query("label_counts", {"enriched": enriched})
    return result


def _file_path(file: SourceFile) -> PurePath:
    return PurePosixPath(file.fs_path) if file.filesystem is not None else Path(file.path)


def _summarize_table(
    ref: TableRef, partition_column: str | None, prefix: str
) -> dict[str, pl.DataFrame]:
    """`summarize` of a Delta or Iceberg DEST: each partition committed with a manifest (in
    the table's commit metadata), read from the table's current version when it is still
    as that commit left it; else listed under `damaged` with the difference."""
    from bertetl.io.manifest import committed_manifests
    from bertetl.io.tables import TableCommit, commit_problem, read_partition

    if not partition_column:
        raise InputError(f"{ref}: a table's summary needs --partition-column (its partitions)")
    from bertetl.io.tables import count_commits, partition_columns

    if not count_commits(ref):
        raise InputError(f"DEST {ref} does not exist (no such table): nothing to summarize")
    from bertetl.io.tables import is_foreign

    if is_foreign(ref):
        raise InputError(f"{ref} holds no commit of bertetl's: nothing it wrote to summarize")
    if (columns := partition_columns(ref)) and partition_column not in columns:
        raise InputError(
            f"--partition-column {partition_column}: {ref} is partitioned by "
            f"{', '.join(columns)}; give one of those"
        )
    error, label, embedding = prefix + ENRICH_ERROR, prefix + LABEL, prefix + EMBEDDING
    frames: list[pl.LazyFrame] = []
    damaged: list[tuple[str, str, str]] = []
    has_labels = False
    for value, (commit, manifest) in sorted(committed_manifests(ref, partition_column).items()):
        assert isinstance(commit, TableCommit)
        problem = commit_problem(commit, manifest.rows_out)
        if problem is not None:
            damaged.append((f"{partition_column}={value}", f"commit {commit.commit_id}", problem))
            continue
        rows = pl.from_arrow(
            read_partition(ref, partition_column, value, [error, label, embedding])
        )
        assert isinstance(rows, pl.DataFrame)
        if error not in rows.columns:
            raise InputError(f"{ref} {partition_column}={value}: no {error!r} column")
        has_labels |= label in rows.columns
        output = label if label in rows.columns else embedding
        frames.append(
            rows.lazy().select(
                pl.lit(value).alias("partition"),
                (pl.col(label) if label in rows.columns else pl.lit(None, pl.String)).alias(
                    "label"
                ),
                (pl.col(output).is_not_null() if output in rows.columns else pl.lit(False)).alias(
                    "encoded"
                ),
                pl.col(error).alias("enrich_error"),
            )
        )
    result = _queries(frames, has_labels) if frames else {}
    if damaged:
        result["damaged"] = pl.DataFrame(
            damaged,
            schema={"folder": pl.String, "file": pl.String, "problem": pl.String},
            orient="row",
        )
    return result


def summarize(
    dest: str | os.PathLike[str] | Location | TableRef,
    partition_column: str | None = None,
    prefix: str = "",
) -> dict[str, pl.DataFrame]:
    """Label counts and row accounting per partition (`sql/label_counts.sql`,
    `sql/output_table.sql`) of the outputs that can be read, and a `damaged` table
    (folder, file, problem) when some cannot (see the module's docstring). A Delta or
    Iceberg DEST is read from the table (`_summarize_table`)."""
    destination = as_destination(dest)
    if not destination.capabilities.files:
        return _summarize_table(destination.place, partition_column, prefix)
    root = destination.shown_root
    files, found = destination.committed_outputs()
    damaged = [d for d in found if not d.problem.startswith(NOT_OUTPUT)]
    _check_partition_column(dest, files, partition_column)
    frames: dict[str, pl.LazyFrame] = {}
    foreign: list[DamagedFile] = [d for d in found if d.problem.startswith(NOT_OUTPUT)]
    has_labels = False
    for file in files:
        frame, problem, labels = _file_frame(file, partition_column, prefix)
        if frame is None:
            broken = _damaged_file(_file_path(file), root, problem)
            (foreign if problem.startswith(NOT_OUTPUT) else damaged).append(broken)
            continue
        frames[file.path] = frame
        has_labels |= labels
    if not frames and not damaged and foreign:
        raise InputError(f"{dest}: {foreign[0].file} is {foreign[0].problem}")
    result: dict[str, pl.DataFrame] = {}
    if frames:
        try:
            result = _queries(list(frames.values()), has_labels)
        except READ_ERRORS:  # a page past the footer is damaged: find the file(s), then again
            for path, frame in list(frames.items()):
                try:
                    frame.collect()
                except READ_ERRORS as e:
                    problem = f"unreadable ({_first_line(e)})"
                    where = PurePosixPath(path.split("://", 1)[1]) if "://" in path else Path(path)
                    damaged.append(_damaged_file(where, root, problem))
                    del frames[path]
            if frames:
                result = _queries(list(frames.values()), has_labels)
    for name, found in (("damaged", damaged), ("foreign", foreign)):
        if found:
            result[name] = pl.DataFrame(
                [(d.folder, d.file, d.problem) for d in found],
                schema={"folder": pl.String, "file": pl.String, "problem": pl.String},
                orient="row",
            ).sort("folder", "file")
    return result


def _check_partition_column(dest: object, files: list[SourceFile], column: str | None) -> None:
    """Refuse (`InputError`) a partition column that none of DEST's files is partitioned by
    (their rows would all be summed under one empty partition), naming the ones they are."""
    if not column or not files or any(column in file.partition for file in files):
        return
    known = sorted({name for file in files for name in file.partition})
    raise InputError(
        f"--partition-column {column}: no file of {dest} is in a {column}=VALUE folder "
        f"(their partition columns: {', '.join(known) or 'none'})"
    )
