"""The checks a partitioned run makes before it locks DEST, starts a server or loads a model,
for every kind of SOURCE and DEST (folders, object stores, tables)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePosixPath
from typing import Any

from bertetl.errors import InputError
from bertetl.io.destinations import as_destination
from bertetl.io.partitions import Partition, list_partitions
from bertetl.io.paths import check_paths, check_remote_paths, check_run_paths
from bertetl.io.read import SourceFile, discover
from bertetl.io.sources import check_source, source_capabilities
from bertetl.io.stores.locations import Location, TableRef, is_remote


def check_partitioned_run(
    source: str | os.PathLike[str] | Location | TableRef,
    dest: object,
    column: str,
    start: str | None = None,
    end: str | None = None,
) -> list[Partition]:
    """Every check a backfill or incremental run can make before it locks DEST, starts a
    server or loads a model; returns the partitions in [start, end].

    SOURCE exists and holds files, each inside a `column=VALUE` folder; DEST is not SOURCE,
    inside it, around it, and overwrites none of its files (`check_run_paths`); a range
    holds at least one partition (`list_partitions`); and the DEST folders of those
    partitions hold nothing bertetl did not write (`Destination.check_foreign`). All are
    `InputError`s of one line that say what to do.
    """
    destination = as_destination(dest)
    if source_capabilities(source).pinned or not destination.capabilities.files:
        return _check_table_run(source, destination, column, start, end)
    files = check_run_paths(source, destination.place)  # type: ignore[arg-type]  # no table
    destination.check()  # not inside another run's DEST, nor holding one
    partitions = list_partitions(source, column, start, end, files=files)
    destination.check_foreign(partitions)
    return partitions


def _check_table_run(
    source: Any, dest: Any, column: str, start: str | None, end: str | None
) -> list[Partition]:
    """`check_partitioned_run` where SOURCE or DEST is a table: the table's package and
    catalog load, DEST is not SOURCE (nor a folder holding a local Delta SOURCE, or inside
    it), and a folder SOURCE holds hive partitions; a folder DEST is checked as usual."""
    check_source(source)
    dest.check()
    if dest.overlaps(source):
        raise InputError(
            f"DEST {dest} is SOURCE {source}, or one holds the other: a run never writes into "
            "its own input; pick another DEST"
        )
    files = None if source_capabilities(source).pinned else discover(source)
    partitions = list_partitions(source, column, start, end, files=files)
    dest.check_foreign(partitions)
    return partitions


def check_partition_paths(partition: Partition, dest: Any) -> None:
    """A folder DEST is outside the partition's SOURCE folder (`check_paths`); a table
    SOURCE's partition (read into a local file) has no folder to check."""
    if partition.table is not None:
        return
    if is_remote(dest) or partition.files[0].filesystem is not None:
        source = _source_root_location(partition)
        check_remote_paths(list(partition.files), source, _as_location(dest))
    else:
        check_paths(list(partition.files), str(_source_root(partition)), os.fspath(dest))


def materialize_partition(partition: Partition, folder: Path) -> tuple[Partition, int | None]:
    """A table SOURCE's partition read from its pinned snapshot into one local Parquet file
    (`bertetl.io.tables.materialize`): the partition with that file, and its rows; a folder
    SOURCE's partition as it is (its rows None: the plan counted them)."""
    if partition.table is None:
        return partition, None
    from bertetl.io.tables import materialize

    name = "part-0.parquet"
    local = folder / f"{partition.column}={partition.value}" / name
    local.parent.mkdir(parents=True, exist_ok=True)
    rows = materialize(partition.table, partition.column, partition.value, local)
    if partition.rows is not None and rows != partition.rows:  # every input row accounted for
        raise InputError(
            f"partition {partition.column}={partition.value} of {partition.table.ref.uri}: "
            f"{rows:,} rows read but its table metadata counts {partition.rows:,}; not enriched"
        )
    file = SourceFile(str(local), f"{partition.folder}/{name}", {partition.column: partition.value})
    return dataclasses.replace(partition, files=(file,)), rows


def _as_location(dest: Any) -> Location:
    if isinstance(dest, Location):
        return dest
    return Location(os.fspath(dest), os.fspath(dest))


def _source_root_location(partition: Partition) -> Location:
    """`_source_root` as a `Location` (on the files' store)."""
    file = partition.files[0]
    location = file.location
    for _ in PurePosixPath(file.relative).parts:
        location = location.parent
    return location


def _source_root(partition: Partition) -> Path:
    """The source root the partition's files sit under (their paths less their `relative`)."""
    file = partition.files[0]
    root = Path(file.path)
    for _ in PurePosixPath(file.relative).parts:
        root = root.parent
    return root
