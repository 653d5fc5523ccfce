"""A table as DEST: commit a partition (or the whole table) in one transaction with its
manifest in the commit's metadata, read the manifests and committed rows back, check a
partition is as its commit left it, and where the run's lock lives, whatever its format."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.errors import CommitError
from bertetl.io.stores.locations import Location, TableRef
from bertetl.io.tables.base import NULL_PARTITION, TableCommit, open_table

log = logging.getLogger(__name__)


def read_committed(
    ref: TableRef, column: str, value: str, fields: list[pa.Field], path: Path
) -> Path | None:
    """The partition's rows in the DEST table's current snapshot, the columns `fields`
    (converted back to their types: embeddings are list<float32> in a table), written to a
    local Parquet file for row reuse; None when they cannot be (then nothing is reused)."""
    names = [f.name for f in fields]
    reader = open_table(ref).batches(column, value, None, names)
    schema = pa.schema(fields)
    try:
        with pq.ParquetWriter(path, schema) as writer:
            for batch in reader:
                columns = [
                    batch.column(name).cast(field.type)
                    for name, field in zip(names, fields, strict=True)
                ]
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    except (pa.ArrowException, KeyError, ValueError) as e:
        log.warning("%s %s=%s: earlier rows not reused: %s", ref.uri, column, value, e)
        return None
    return path


def commit_records(ref: TableRef, column: str) -> dict[str, TableCommit]:
    """The newest commit carrying each partition's manifest (Delta: the history; Iceberg:
    the current snapshot's ancestors), by partition value. A manifest whose commit fell out
    of the table's history (Delta log cleanup, expired Iceberg snapshots) is not found, and
    its partition is redone: never wrong, only work."""
    found: dict[str, TableCommit] = {}
    for commit_id, text in open_table(ref).records(column):
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if record.get("partition_column") != column or "partition" not in record:
            continue
        found.setdefault(
            str(record["partition"]),
            TableCommit(ref, column, str(record["partition"]), commit_id, text),
        )
    return found


def read_partition(ref: TableRef, column: str, value: str, columns: list[str]) -> pa.Table:
    """The `columns` of one partition of the table's current version (those it has; the
    partition filter pushed down)."""
    table = open_table(ref)
    present = set(table.schema(None).names)
    return table.batches(column, value, None, [c for c in columns if c in present]).read_all()


def commit_problem(commit: TableCommit, rows: int) -> str | None:
    """How the partition in the table differs from what its commit wrote (its data files
    are no longer exactly those that commit added, or their rows do not add up to `rows`);
    None when it is as committed."""
    return open_table(commit.ref).commit_problem(commit, rows)


def table_type(data_type: pa.DataType) -> pa.DataType:
    """The type a column gets in a table: fixed-size lists (embeddings, scores) become
    lists (neither Delta nor Iceberg has a fixed-size list), large strings stay strings."""
    if pa.types.is_fixed_size_list(data_type):
        return pa.list_(table_type(data_type.value_type))
    return data_type


def column_type(table: object, data_type: pa.DataType) -> pa.DataType:
    """The type a column gets in `table`'s format: `table_type`, unless the format keeps
    fixed-size lists (`fixed_size_lists`: Lance, whose vector indexes need them)."""
    return data_type if getattr(table, "fixed_size_lists", False) else table_type(data_type)


def commit_partition(
    ref: TableRef, column: str, value: str, files: list[Path], manifest_json: str
) -> None:
    """Replace the partition `column=value` of the DEST table with the rows of the staged
    Parquet `files` (the partition column added), in ONE table transaction that carries
    the manifest in its metadata. Readers see the old partition or the new one."""
    table = open_table(ref)
    schema = pq.read_schema(files[0]) if files else None
    if schema is None:
        raise CommitError(f"{ref.uri}: partition {column}={value} has no staged output")
    partition_type = table.field_type(column) or pa.string()
    fields = [
        pa.field(f.name, column_type(table, f.type), metadata=f.metadata)
        for f in schema
        if f.name != column
    ]
    target = pa.schema([*fields, pa.field(column, partition_type)])

    def batches() -> Iterator[pa.RecordBatch]:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches():
                columns = [batch.column(f.name).cast(f.type) for f in fields]
                constant = (
                    pa.nulls(batch.num_rows, partition_type)
                    if value == NULL_PARTITION
                    else pa.array([value] * batch.num_rows, pa.string()).cast(partition_type)
                )
                yield pa.RecordBatch.from_arrays([*columns, constant], schema=target)

    reader = pa.RecordBatchReader.from_batches(target, batches())
    table.commit(column, value, reader, manifest_json)


def lock_place(ref: TableRef) -> Path | Location:
    """Where DEST's one-run lock for a table lives (`bertetl.io.commit.destination_lock`
    takes it there), as its format says: for Delta the sidecar folder `<table>.bertetl/`
    (local, or a prefix on S3), for Iceberg a folder in the catalog's warehouse."""
    return open_table(ref).lock_place()


def count_commits(ref: TableRef) -> int:
    """How many commits the table has had (Delta versions; Iceberg metadata versions, one
    per catalog commit): what a rerun with nothing to do must leave unchanged."""
    return open_table(ref).count_commits()


def replace_table(ref: TableRef, root: Path, files: list[Path], rows: int, record: str) -> None:
    """Replace every row of the table with the rows of the staged Parquet `files` under
    `root` (the table created when there is none), in ONE table transaction carrying `record`
    in its metadata: readers see the old rows or the new ones. Hive folders under `root`
    (`date=2026-01-01/`) become string columns, as `backfill` writes partition values. The
    files must hold `rows` rows, or nothing is committed."""
    import pyarrow.dataset as ds

    if not files:
        raise CommitError(f"{ref.uri}: no staged output to commit")
    staged = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    if staged != rows:
        raise CommitError(f"{ref.uri}: the staged output holds {staged:,} rows, not {rows:,}")
    keys = sorted(
        {
            part.split("=", 1)[0]
            for f in files
            for part in f.relative_to(root).parts[:-1]
            if "=" in part
        }
    )
    partitioning = ds.partitioning(pa.schema([(key, pa.string()) for key in keys]), flavor="hive")
    try:
        columns = pa.unify_schemas(
            [pq.read_schema(file) for file in files], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise CommitError(f"{ref.uri}: the input files' schemas do not agree: {e}") from e
    added = [pa.field(key, pa.string()) for key in keys if key not in columns.names]
    dataset = ds.dataset(
        [str(file) for file in files],
        format="parquet",
        partitioning=partitioning,
        partition_base_dir=str(root),
        schema=pa.schema([*columns, *added]),
    )
    table = open_table(ref)
    target = pa.schema(
        [pa.field(f.name, column_type(table, f.type), metadata=f.metadata) for f in dataset.schema]
    )

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in dataset.to_batches():
            yield pa.RecordBatch.from_arrays(
                [batch.column(f.name).cast(f.type) for f in target], schema=target
            )

    table.replace_all(target, batches(), record)


#: Tries of a MERGE that a concurrent writer's commit conflicted with.
MERGE_TRIES = 3


def merge_rows(
    ref: TableRef, files: list[Path], deletes: pa.Table | None, key: list[str], record: str
) -> None:
    """Upsert the rows of the staged Parquet `files` by `key` and delete the keys in
    `deletes`, in ONE table transaction carrying `record`. A conflict with a concurrent
    writer is retried (the merge is recomputed against the new version), then one line."""
    from bertetl.errors import TransientError

    schema = pa.unify_schemas([pq.read_schema(f) for f in files]) if files else None
    if schema is None:  # deletes only: the table's own columns
        schema = open_table(ref).schema(None)
    target = pa.schema([pa.field(f.name, table_type(f.type), metadata=f.metadata) for f in schema])

    def batches() -> Iterator[pa.RecordBatch]:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches():
                yield pa.RecordBatch.from_arrays(
                    [batch.column(f.name).cast(f.type) for f in target], schema=target
                )

    for attempt in range(1, MERGE_TRIES + 1):
        try:
            open_table(ref).merge_keyed(target, batches(), deletes, key, record)
            return
        except TransientError as e:
            if attempt == MERGE_TRIES:
                raise TransientError(
                    f"{ref.uri}: another writer's commits conflicted with this run's merge "
                    f"{MERGE_TRIES} times; nothing of it was committed, rerun it ({e})"
                ) from e


def keyed_rows(ref: TableRef, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The table's current rows, `columns` of them that it has (none: no table)."""
    return open_table(ref).keyed_batches(columns)


def last_record(ref: TableRef) -> str | None:
    """The record of the table's newest bertetl commit."""
    return open_table(ref).last_record()


def is_foreign(ref: TableRef) -> bool:
    """Whether the table holds rows and no commit of bertetl's (none carries its record under
    `MANIFEST_KEY`): a table bertetl did not write, which a run must not replace."""
    table = open_table(ref)
    return table.holds_rows() and not table.records("")
