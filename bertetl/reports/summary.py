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
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

import polars as pl
import pyarrow as pa

from bertetl.errors import InputError
from bertetl.io.manifest import (
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    verified_outputs,
    verify_outputs,
)
from bertetl.io.read import SourceFile, discover, open_parquet
from bertetl.io.storage import Location, TableRef, is_remote, is_table
from bertetl.reports.sql import run_query
from bertetl.schema import EMBEDDING, ENRICH_ERROR, LABEL

#: Errors of reading a damaged Parquet file, from pyarrow, polars or the OS.
READ_ERRORS = (pa.ArrowException, pl.exceptions.PolarsError, OSError)
#: How a readable Parquet file without bertetl's columns is described.
NOT_OUTPUT = "not bertetl output"


@dataclass(frozen=True)
class DamagedFile:
    """An output that is not read: `folder` and `file` relative to DEST, and why."""

    folder: str
    file: str
    problem: str


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _relative(path: PurePath, root: PurePath) -> str:
    """`path` as shown to users: relative to DEST (to its folder when DEST is a file; an
    object-store DEST, a `PurePosixPath` of its path on the store, is a prefix)."""
    base = root if not isinstance(root, Path) or root.is_dir() else root.parent
    try:
        return path.relative_to(base).as_posix() if path != base else "."
    except ValueError:
        return str(path)


def _damaged_file(path: PurePath, root: PurePath, problem: str) -> DamagedFile:
    return DamagedFile(_relative(path.parent, root), _relative(path, root), problem)


def _manifests(dest: Path) -> dict[Path, Manifest | None]:
    """Every folder under DEST with a `_manifest.json` (hidden folders skipped, as readers
    skip them), with its manifest or None when that cannot be read."""
    if not dest.is_dir():
        return {}
    found: dict[Path, Manifest | None] = {}
    for path in sorted(dest.rglob(MANIFEST_NAME)):
        if any(part.startswith((".", "_")) for part in path.relative_to(dest).parts[:-1]):
            continue
        found[path.parent] = read_manifest(path.parent)
    return found


def _remote_manifests(dest: Location) -> dict[Location, Manifest | None]:
    """`_manifests` on an object store: from one listing of DEST."""
    from bertetl.io.partitions import remote_files

    found: dict[Location, Manifest | None] = {}
    for relative in remote_files(dest):
        parts = PurePosixPath(relative).parts
        if parts[-1] != MANIFEST_NAME or any(p.startswith((".", "_")) for p in parts[:-1]):
            continue
        folder = dest / str(PurePosixPath(relative).parent)
        found[folder] = read_manifest(folder)
    return found


def _remote_check_outputs(dest: Location) -> tuple[list[SourceFile], list[DamagedFile]]:
    """`check_outputs` on an object store (paths compared as they are: no links there)."""
    root = PurePosixPath(dest.path)
    folders = _remote_manifests(dest)
    damaged: list[DamagedFile] = []
    claimed: set[str] = set()
    for folder, manifest in folders.items():
        where = _relative(PurePosixPath(folder.path), root)
        if manifest is None:
            problem = "unreadable manifest; the folder's files are read as found"
            damaged.append(DamagedFile(where, f"{where}/{MANIFEST_NAME}", problem))
            continue
        damage = verify_outputs(folder, manifest)
        for item in damage:
            name = PurePosixPath(folder.path) / item.relative
            damaged.append(DamagedFile(where, _relative(name, root), item.problem))
        claimed.update(f"{folder.path}/{name}" for name in verified_outputs(manifest, damage))
    committed = {PurePosixPath(f.path) for f, m in folders.items() if m is not None}
    try:
        found = discover(dest)
    except InputError:
        if not committed:
            raise
        found = []
    files = [
        file
        for file in found
        if file.fs_path in claimed or not committed & set(PurePosixPath(file.fs_path).parents)
    ]
    return files, damaged


def check_outputs(
    dest: str | os.PathLike[str] | Location,
) -> tuple[list[SourceFile], list[DamagedFile]]:
    """The data files under DEST to read, and the damaged ones: in a folder with a manifest,
    the outputs it lists that verify (`verify_outputs`); elsewhere, every data file."""
    if is_remote(dest):
        assert isinstance(dest, Location)
        return _remote_check_outputs(dest)
    root = Path(dest.path if isinstance(dest, Location) else dest)
    folders = _manifests(root)
    damaged: list[DamagedFile] = []
    claimed: set[Path] = set()
    for folder, manifest in folders.items():
        where = _relative(folder, root)
        if manifest is None:
            problem = "unreadable manifest; the folder's files are read as found"
            damaged.append(DamagedFile(where, f"{where}/{MANIFEST_NAME}", problem))
            continue
        damage = verify_outputs(folder, manifest)
        for item in damage:
            name = (folder / item.relative) if item.relative else folder
            damaged.append(DamagedFile(where, _relative(name, root), item.problem))
        claimed.update((folder / name).resolve() for name in verified_outputs(manifest, damage))
    committed = {folder.resolve() for folder, manifest in folders.items() if manifest is not None}
    try:
        found = discover(dest)
    except InputError:
        if not committed:
            raise
        found = []  # every output listed is gone: the damage says so
    files = []
    for file in found:  # compared as real paths: however discovery spells them
        path = Path(file.path).resolve()
        if path in claimed or not committed & set(path.parents):
            files.append(file)
    return files, damaged


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
    if is_table(dest):
        return _summarize_table(dest, partition_column, prefix)
    assert not isinstance(dest, TableRef)
    root: PurePath = (
        PurePosixPath(dest.path)
        if isinstance(dest, Location) and is_remote(dest)
        else Path(dest.path if isinstance(dest, Location) else dest)
    )
    files, damaged = check_outputs(dest)
    frames: dict[str, pl.LazyFrame] = {}
    foreign: list[DamagedFile] = []
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
    damaged += foreign
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
    if damaged:
        result["damaged"] = pl.DataFrame(
            [(d.folder, d.file, d.problem) for d in damaged],
            schema={"folder": pl.String, "file": pl.String, "problem": pl.String},
            orient="row",
        ).sort("folder", "file")
    return result
