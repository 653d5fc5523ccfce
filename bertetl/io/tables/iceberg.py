"""Apache Iceberg tables through `pyiceberg`: `iceberg://CATALOG/NAMESPACE.TABLE`, the catalog
from pyiceberg's own configuration (`~/.pyiceberg.yaml` or `PYICEBERG_CATALOG__<NAME>__...`
variables; storage options are passed to `load_catalog` as extra properties).

A partition is replaced by `Table.overwrite(overwrite_filter=EqualTo(...))` in one catalog
commit, the manifest in the snapshot summary; the current snapshot's ancestors read it back,
and the manifest entries tell which snapshot added each data file. Iceberg's schema cannot
carry Arrow field metadata, so it is kept in table properties (`FIELD_METADATA_PREFIX`). DEST's
lock is in the catalog's warehouse. See docs/STORAGE.md.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from bertetl.errors import CommitError, InputError, TransientError
from bertetl.io.stores.locations import (
    Location,
    StorageError,
    TableRef,
    parse_location,
    table_uri_parts,
)
from bertetl.io.tables.base import (
    MANIFEST_KEY,
    NULL_PARTITION,
    TableCommit,
    TableFile,
    TableFormat,
    TablePartition,
    file_key,
    location_options,
    missing_extra,
)

#: Table property prefix holding a column's Arrow field metadata (e.g. the label order of
#: `scores`), which Iceberg's schema cannot carry.
FIELD_METADATA_PREFIX = "bertetl.field-metadata."


def _metadata_properties(schema: pa.Schema) -> dict[str, str]:
    """Each field's Arrow metadata as a table property (JSON), for formats without it."""
    return {
        FIELD_METADATA_PREFIX + f.name: json.dumps(
            {k.decode(): v.decode() for k, v in f.metadata.items()}, sort_keys=True
        )
        for f in schema
        if f.metadata
    }


def _with_metadata(schema: pa.Schema, properties: dict[str, str]) -> pa.Schema:
    """`schema` with the field metadata kept in table `properties` put back."""
    fields = []
    for f in schema:
        raw = properties.get(FIELD_METADATA_PREFIX + f.name)
        fields.append(f.with_metadata(json.loads(raw)) if raw else f)
    return pa.schema(fields, metadata=schema.metadata)


def _equal_to(column: str, value: str) -> Any:
    """pyiceberg's `EqualTo(column, value)` (its pydantic signature confuses type checkers),
    or `IsNull(column)` for the null partition (`NULL_PARTITION`)."""
    from pyiceberg.expressions import EqualTo, IsNull

    if value == NULL_PARTITION:
        is_null: Any = IsNull
        return is_null(column)
    equal_to: Any = EqualTo
    return equal_to(column, value)


def _new_columns(current: Any, arrow: pa.Schema) -> list[str]:
    """The columns of `arrow` that the Iceberg schema `current` lacks (a SOURCE column added
    since the table was made: the commit adds them, `union_by_name`)."""
    known = {field.name for field in current.fields}
    return [name for name in arrow.names if name not in known]


class IcebergFormat:
    """Apache Iceberg through `pyiceberg`, the catalog from its own configuration."""

    extra: ClassVar[str] = "iceberg"
    package: ClassVar[str] = "pyiceberg"
    examples: ClassVar[tuple[str, ...]] = ("iceberg://prod/sales.reviews",)

    @classmethod
    def parse(cls, text: str, options: tuple[tuple[str, str], ...]) -> TableRef:
        """`iceberg://CATALOG/NAMESPACE.TABLE`; the options go to the catalog."""
        scheme, rest = table_uri_parts(text)
        catalog, _, identifier = rest.partition("/")
        if not catalog or "." not in identifier or identifier.startswith(".") or "/" in identifier:
            raise StorageError(f"{text}: expected iceberg://CATALOG/NAMESPACE.TABLE")
        return TableRef(scheme, f"{scheme}://{rest}", rest, options)

    @classmethod
    def is_local(cls, address: str) -> bool:
        return False  # in a catalog, wherever its warehouse is

    def __init__(self, ref: TableRef) -> None:
        try:
            import pyiceberg.catalog  # noqa: F401
        except ImportError as e:
            raise missing_extra(ref, e) from e
        self.ref = ref
        self.catalog_name, _, self.identifier = ref.address.partition("/")
        self._catalog: Any = None

    def check(self) -> None:
        """Load the catalog (a one-line `StorageError` when it cannot be)."""
        _ = self.catalog

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            from pyiceberg.catalog import load_catalog

            try:
                self._catalog = load_catalog(self.catalog_name, **dict(self.ref.options))
            except Exception as e:  # pyiceberg raises ValueError and friends for a bad config
                raise StorageError(
                    f"{self.ref.uri}: cannot load Iceberg catalog {self.catalog_name!r}: {e}; "
                    f"configure it in ~/.pyiceberg.yaml or PYICEBERG_CATALOG__"
                    f"{self.catalog_name.upper()}__URI"
                ) from e
        return self._catalog

    def open(self, version: int | None = None) -> Any:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None

    def holds_rows(self) -> bool:
        table = self.open()
        return table is not None and table.current_snapshot() is not None

    def _require(self) -> Any:
        table = self.open()
        if table is None:
            raise InputError(f"{self.ref.uri}: no Iceberg table there")
        return table

    def pin(self) -> int | None:
        snapshot = self._require().current_snapshot()
        return None if snapshot is None else int(snapshot.snapshot_id)

    def schema(self, version: int | None) -> pa.Schema:
        return self._require().schema().as_arrow()

    def _identity(self, table: Any, column: str) -> None:
        from pyiceberg.transforms import IdentityTransform

        schema = table.schema()
        for field in table.spec().fields:
            source = schema.find_field(field.source_id)
            if source.name == column and isinstance(field.transform, IdentityTransform):
                return
        raise InputError(
            f"{self.ref.uri} is not partitioned by identity({column}); bertetl replaces whole "
            "partitions of the partition column"
        )

    def _tasks(self, table: Any, column: str, value: str | None, version: int | None) -> Any:
        from pyiceberg.expressions import AlwaysTrue

        if version is None and table.current_snapshot() is None:
            return []
        row_filter = AlwaysTrue() if value is None else _equal_to(column, value)
        return table.scan(row_filter=row_filter, snapshot_id=version).plan_files()

    def _value(self, table: Any, task_file: Any, column: str) -> str:
        from pyiceberg.transforms import IdentityTransform

        spec = table.specs()[task_file.spec_id]
        schema = table.schema()
        for position, field in enumerate(spec.fields):
            source = schema.find_field(field.source_id)
            if source.name == column and isinstance(field.transform, IdentityTransform):
                raw = task_file.partition[position]
                if raw is None:
                    return NULL_PARTITION
                return str(field.transform.to_human_string(source.field_type, raw))
        raise InputError(f"{task_file.file_path} of {self.ref.uri} has no {column} partition")

    def partitions(self, column: str, version: int | None) -> list[TablePartition]:
        table = self._require()
        self._identity(table, column)
        grouped: dict[str, list[TableFile]] = {}
        for task in self._tasks(table, column, None, version):
            file = task.file
            deletes = sorted(d.file_path for d in task.delete_files)
            grouped.setdefault(self._value(table, file, column), []).append(
                TableFile(
                    path=file.file_path,
                    size=int(file.file_size_in_bytes),
                    mtime_ns=0,
                    key=file_key(file.file_path, file.file_size_in_bytes, *deletes),
                    rows=None if deletes else int(file.record_count),
                )
            )
        return [
            TablePartition(value, tuple(sorted(files, key=lambda f: f.path)))
            for value, files in sorted(grouped.items())
        ]

    def batches(
        self, column: str, value: str, version: int | None, columns: list[str] | None
    ) -> pa.RecordBatchReader:

        table = self._require()
        scan = table.scan(
            row_filter=_equal_to(column, value),
            snapshot_id=version,
            selected_fields=tuple(columns) if columns else ("*",),
        )
        return scan.to_arrow_batch_reader()

    def all_batches(self, version: int | None) -> pa.RecordBatchReader:
        table = self._require()
        reader = table.scan(snapshot_id=version).to_arrow_batch_reader()
        schema = _with_metadata(reader.schema, dict(table.properties))
        return pa.RecordBatchReader.from_batches(
            schema, (pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in reader)
        )

    def partition_columns(self) -> list[str]:
        table = self.open()
        if table is None:
            return []
        schema = table.schema()
        return [schema.find_field(field.source_id).name for field in table.spec().fields]

    def replace_all(
        self, schema: pa.Schema, batches: Iterator[pa.RecordBatch], record: str
    ) -> None:
        from pyiceberg.exceptions import CommitFailedException
        from pyiceberg.expressions import AlwaysTrue

        properties = {MANIFEST_KEY: record}
        metadata = _metadata_properties(schema)
        rows = pa.RecordBatchReader.from_batches(schema, batches)  # streamed, one data commit
        try:
            table = self.open()
            if table is None:  # created and filled in ONE catalog commit
                namespace = self.identifier.rsplit(".", 1)[0]
                self.catalog.create_namespace_if_not_exists(namespace)
                create = self.catalog.create_table_transaction(
                    self.identifier, schema=schema, properties=metadata
                )
                with create as transaction:
                    transaction.append(rows, snapshot_properties=properties)
                return
            # ONE transaction (one catalog commit): the schema becomes this run's (columns of
            # an earlier run dropped, as Delta's schema overwrite does), every old row deleted
            # and the new rows appended
            stale = [name for name in table.schema().as_arrow().names if name not in schema.names]
            with table.transaction() as transaction:
                with transaction.update_schema() as update:
                    update.union_by_name(schema)
                    for name in stale:
                        update.delete_column(name)
                old = [k for k in table.properties if k.startswith(FIELD_METADATA_PREFIX)]
                if gone := [k for k in old if k not in metadata]:
                    transaction.remove_properties(*gone)
                if metadata:
                    transaction.set_properties(metadata)
                with warnings.catch_warnings():  # an empty table: the delete matches nothing
                    warnings.filterwarnings("ignore", "Delete operation did not match any records")
                    transaction.delete(AlwaysTrue(), snapshot_properties=properties)
                transaction.append(rows, snapshot_properties=properties)
        except CommitFailedException as e:
            raise TransientError(f"{self.ref.uri}: commit failed: {e}") from e
        except (ValueError, OSError, pa.ArrowException) as e:
            raise CommitError(f"{self.ref.uri}: cannot commit: {e}") from e

    def merge_keyed(
        self,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
    ) -> None:
        """ONE transaction (one catalog commit): new columns added, the rows of every key
        upserted or deleted removed (pyiceberg's `create_match_filter`), the upserted rows
        appended."""
        from pyiceberg.exceptions import CommitFailedException
        from pyiceberg.table.upsert_util import create_match_filter

        properties = {MANIFEST_KEY: record}
        rows = pa.Table.from_batches(list(batches), schema=schema)
        try:
            table = self.open()
            if table is None:
                namespace = self.identifier.rsplit(".", 1)[0]
                self.catalog.create_namespace_if_not_exists(namespace)
                create = self.catalog.create_table_transaction(
                    self.identifier, schema=schema, properties=_metadata_properties(schema)
                )
                with create as transaction:
                    transaction.append(rows, snapshot_properties=properties)
                return
            keys = rows.select(key)
            if deletes is not None and deletes.num_rows:
                keys = pa.concat_tables(
                    [keys, deletes.select(key).cast(keys.schema)], promote_options="permissive"
                )
            with table.transaction() as transaction:
                with transaction.update_schema() as update:
                    update.union_by_name(schema)
                if keys.num_rows:
                    with warnings.catch_warnings():
                        warnings.filterwarnings(
                            "ignore", "Delete operation did not match any records"
                        )
                        transaction.delete(
                            create_match_filter(keys, key), snapshot_properties=properties
                        )
                if rows.num_rows:
                    transaction.append(rows, snapshot_properties=properties)
        except CommitFailedException as e:
            raise TransientError(f"{self.ref.uri}: merge failed: {e}") from e
        except (ValueError, OSError, pa.ArrowException) as e:
            raise CommitError(f"{self.ref.uri}: cannot merge: {e}") from e

    def keyed_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        table = self.open()
        if table is None or table.current_snapshot() is None:
            return
        names = table.schema().as_arrow().names
        present = tuple(name for name in columns if name in names)
        yield from table.scan(selected_fields=present).to_arrow_batch_reader()

    def last_record(self) -> str | None:
        """From the newest snapshot that carries one, whatever its operation (a merge of
        deletes only makes no append)."""
        from pyiceberg.table.snapshots import ancestors_of

        table = self.open()
        if table is None or table.current_snapshot() is None:
            return None
        for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
            text = None if snapshot.summary is None else snapshot.summary.get(MANIFEST_KEY)
            if text is not None:
                return str(text)
        return None

    def records(self, column: str) -> list[tuple[int, str]]:
        from pyiceberg.table.snapshots import ancestors_of

        table = self.open()
        if table is None or table.current_snapshot() is None:
            return []
        found = []
        for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
            summary = snapshot.summary
            if summary is None or summary.operation.value != "append":
                continue  # the manifest is read from the commit's append snapshot
            text = summary.get(MANIFEST_KEY)
            if text is not None:
                found.append((int(snapshot.snapshot_id), str(text)))
        return found

    def commit_problem(self, commit: TableCommit, rows: int) -> str | None:
        table = self._require()
        entries = table.inspect.entries()
        added_by = dict(
            zip(
                entries.column("data_file").combine_chunks().field("file_path").to_pylist(),
                entries.column("snapshot_id").to_pylist(),
                strict=True,
            )
        )
        total = 0
        for task in self._tasks(table, commit.column, commit.value, None):
            if self._value(table, task.file, commit.column) != commit.value:
                continue
            if task.delete_files:
                return "rows were deleted since its commit (delete files)"
            if added_by.get(task.file.file_path) != commit.commit_id:
                return f"data files changed since its commit (snapshot {commit.commit_id})"
            total += int(task.file.record_count)
        if total != rows:
            return f"holds {total:,} rows, the manifest says {rows:,}"
        return None

    def commit(
        self, column: str, value: str, reader: pa.RecordBatchReader, manifest_json: str
    ) -> None:
        from pyiceberg.exceptions import CommitFailedException

        table = self.open()
        # pyiceberg writes a partitioned table from an Arrow table only, not a stream: one
        # partition's rows are held in memory here (docs/STORAGE.md)
        data = reader.read_all()
        try:
            if table is None:
                table = self._create(data.schema, column)
            with warnings.catch_warnings():  # a first commit of the partition deletes nothing
                warnings.filterwarnings("ignore", "Delete operation did not match any records")
                with table.transaction() as transaction:
                    if metadata := _metadata_properties(reader.schema):
                        transaction.set_properties(metadata)
                    if _new_columns(table.schema(), data.schema):  # one transaction with them
                        with transaction.update_schema() as update:
                            update.union_by_name(data.schema)
                    transaction.overwrite(
                        data,
                        overwrite_filter=_equal_to(column, value),
                        snapshot_properties={MANIFEST_KEY: manifest_json},
                    )
        except CommitFailedException as e:
            raise TransientError(f"{self.ref.uri}: commit of {column}={value} failed: {e}") from e
        except (ValueError, OSError, pa.ArrowException) as e:
            raise CommitError(f"{self.ref.uri}: cannot commit {column}={value}: {e}") from e

    def _create(self, schema: pa.Schema, column: str) -> Any:
        """A new table of `schema`, partitioned by identity(`column`)."""
        namespace = self.identifier.rsplit(".", 1)[0]
        self.catalog.create_namespace_if_not_exists(namespace)
        table = self.catalog.create_table(self.identifier, schema=schema)
        with table.update_spec() as spec:
            spec.add_identity(column)
        return table

    def field_type(self, column: str) -> pa.DataType | None:
        table = self.open()
        if table is None:
            return None
        schema = table.schema().as_arrow()
        return schema.field(column).type if column in schema.names else None

    def lock_place(self) -> Path | Location:
        """In the catalog's warehouse (`<warehouse>/.bertetl-locks/<catalog>.<table>/`, a
        local `flock` or the S3 lock), else on this machine only: then pyiceberg's
        optimistic concurrency is what keeps writers on other machines apart."""
        warehouse = str(getattr(self.catalog, "properties", {}).get("warehouse", ""))
        name = f".bertetl-locks/{self.catalog_name}.{self.identifier}"
        if warehouse.startswith("file://") or (warehouse and "://" not in warehouse):
            return Path(warehouse.removeprefix("file://")) / name
        if warehouse.startswith(("s3://", "s3a://")):
            return parse_location(f"{warehouse.rstrip('/')}/{name}", location_options(self.ref))
        return Path(tempfile.gettempdir()) / "bertetl-locks" / file_key(self.ref.uri)[:16]

    def count_commits(self) -> int:
        table = self.open()
        return 0 if table is None else len(table.metadata.metadata_log) + 1


#: The class implements the protocol (mypy checks this line).
_IMPLEMENTS: type[TableFormat] = IcebergFormat
