"""A table as SOURCE: pin one version for the whole run, list its partitions from metadata, and
read a partition (or the whole table) into local Parquet files, whatever its format."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.io.stores.locations import TableRef
from bertetl.io.tables.base import TablePartition, TableSnapshot, open_table

#: Rows per row group of a materialized source partition.
ROW_GROUP_ROWS = 8192


def check_table(ref: TableRef) -> None:
    """Fail early (a one-line `StorageError`) when the table's package is missing or its
    catalog cannot be loaded."""
    open_table(ref).check()


def pin(ref: TableRef) -> TableSnapshot:
    """The SOURCE table at its current version or snapshot: what the whole run reads."""
    return TableSnapshot(ref, open_table(ref).pin())


def source_schema(snapshot: TableSnapshot) -> pa.Schema:
    """The SOURCE table's Arrow schema."""
    return open_table(snapshot.ref).schema(snapshot.version)


def source_partitions(snapshot: TableSnapshot, column: str) -> list[TablePartition]:
    """The pinned table's partitions of `column` and their data files, from metadata only
    (no row is read); an `InputError` when the table is not partitioned by `column`."""
    return open_table(snapshot.ref).partitions(column, snapshot.version)


def materialize(snapshot: TableSnapshot, column: str, value: str, path: Path) -> int:
    """Read one partition of the pinned table (the partition filter pushed down) into a
    local Parquet file at `path`, without the partition column (its value is the
    partition's, as in a hive folder); returns its rows."""
    reader = open_table(snapshot.ref).batches(column, value, snapshot.version, None)
    schema = pa.schema([f for f in reader.schema if f.name != column])
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in reader:
            if column in batch.schema.names:
                batch = batch.drop_columns([column])
            if batch.num_rows:
                writer.write_batch(batch.cast(schema), row_group_size=ROW_GROUP_ROWS)
                rows += batch.num_rows
    return rows


def materialize_all(
    snapshot: TableSnapshot, folder: Path, rows_per_file: int | None = None
) -> list[Path]:
    """Read the whole pinned table (every partition, partition columns included) into local
    Parquet files in `folder`, streaming: `NAME.parquet` (NAME: the table's last path or
    identifier part), or with `rows_per_file` a new file once one holds that many rows (at a
    batch boundary: `NAME-00000.parquet`, ...; a single file keeps the plain name), so that
    several workers can share them. Returns the files."""
    ref = snapshot.ref
    name = ref.address.rstrip("/").rsplit("/", 1)[-1] or ref.format
    reader = open_table(ref).all_batches(snapshot.version)
    files: list[Path] = []
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for batch in reader:
            if not batch.num_rows and writer is not None:
                continue
            if writer is None or (rows_per_file and rows >= rows_per_file):
                if writer is not None:
                    writer.close()
                files.append(folder / f"{name}-{len(files):05d}.parquet")
                writer, rows = pq.ParquetWriter(files[-1], reader.schema), 0
            writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
            rows += batch.num_rows
        if writer is None:  # an empty table: one empty file of its schema
            files.append(folder / f"{name}-00000.parquet")
            writer = pq.ParquetWriter(files[-1], reader.schema)
    finally:
        if writer is not None:
            writer.close()
    if len(files) == 1:
        files = [files[0].rename(folder / f"{name}.parquet")]
    return files


def partition_columns(ref: TableRef) -> list[str]:
    """The table's partition columns ([] when unpartitioned or when there is no table)."""
    return open_table(ref).partition_columns()
