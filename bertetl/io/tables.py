"""Delta Lake and Iceberg tables as SOURCE and DEST of partitioned runs (`deltalake`,
`pyiceberg`: the `delta` and `iceberg` extras).

A table is addressed as `delta://PATH_OR_URI` (`delta:///data/t`, `delta://s3://bucket/t`) or
`iceberg://CATALOG/NAMESPACE.TABLE` (the catalog from pyiceberg's own configuration:
`~/.pyiceberg.yaml` or `PYICEBERG_CATALOG__<NAME>__...` variables). `bertetl.io.storage`
parses the address into a `TableRef`; this module reads and commits it.

As SOURCE, a run reads one version (Delta) or snapshot (Iceberg) pinned at its start
(`pin`). The partitions and their input fingerprints come from the table's metadata (the
data files of the pinned version in each partition: path, size, deletion vectors or delete
files), so a partition is skipped without reading its rows; one that is enriched is first
read into a local Parquet file (`materialize`, the partition filter pushed down).

As DEST, each partition is committed as ONE table transaction that replaces exactly that
partition (`commit_partition`): Delta `write_deltalake(mode="overwrite", predicate=...)`,
Iceberg `Table.overwrite(overwrite_filter=EqualTo(...))`. The partition's manifest (the
JSON of `bertetl.io.manifest.Manifest`) travels in the commit's own metadata (Delta commit
info, Iceberg snapshot summary) under `MANIFEST_KEY`, and `commit_records` reads it back, so
`incremental` decides from the table alone. See docs/STORAGE.md.

This module knows no `Manifest`: it moves the manifest as JSON text, and `io.manifest` and
`io.partitions` turn it (and the fingerprints) into their models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.errors import CommitError, InputError, TransientError
from bertetl.io.storage import TABLE_FORMATS, Location, StorageError, TableRef, parse_location

log = logging.getLogger(__name__)

#: The key of the manifest in a commit's metadata (Delta commit info, Iceberg summary).
MANIFEST_KEY = "bertetl.manifest"
#: The sidecar beside a table that holds DEST's lock (`<table>.bertetl/.bertetl.lock`).
SIDECAR_SUFFIX = ".bertetl"
#: Rows per row group of a materialized source partition.
ROW_GROUP_ROWS = 8192


@dataclass(frozen=True)
class TableFile:
    """One data file of a table partition, as its metadata tells: `key` names its content
    (path, size and any deletion vector or delete files), `rows` its rows (None: not known
    from metadata, e.g. rows deleted by a delete file)."""

    path: str
    size: int
    mtime_ns: int
    key: str
    rows: int | None


@dataclass(frozen=True)
class TablePartition:
    """One value of the partition column in a pinned SOURCE table, with its data files."""

    value: str
    files: tuple[TableFile, ...]

    @property
    def rows(self) -> int | None:
        counts = [f.rows for f in self.files]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)


@dataclass(frozen=True)
class TableSnapshot:
    """A SOURCE table pinned at one version (Delta) or snapshot id (Iceberg) for a run."""

    ref: TableRef
    version: int | None


@dataclass(frozen=True)
class TableCommit:
    """A DEST table's commit that carries a partition's manifest: the Delta version or the
    Iceberg snapshot id, and the manifest's JSON."""

    ref: TableRef
    column: str
    value: str
    commit_id: int
    manifest_json: str


def missing_extra(ref: TableRef, error: ImportError) -> StorageError:
    """A missing `deltalake` or `pyiceberg` as one line naming the extra."""
    extra, package = TABLE_FORMATS[ref.format]
    return StorageError(f"{ref.uri} needs {package}: pip install 'bertetl[{extra}]' ({error})")


def _key(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()


def _equal_to(column: str, value: str) -> Any:
    """pyiceberg's `EqualTo(column, value)` (its pydantic signature confuses type checkers)."""
    from pyiceberg.expressions import EqualTo

    equal_to: Any = EqualTo
    return equal_to(column, value)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# -- the formats ------------------------------------------------------------------------------


class _Delta:
    """Delta Lake through `deltalake` (delta-rs)."""

    def __init__(self, ref: TableRef) -> None:
        try:
            import deltalake
        except ImportError as e:
            raise missing_extra(ref, e) from e
        self.deltalake = deltalake
        self.ref = ref
        self.storage_options = delta_storage_options(ref)

    def open(self, version: int | None = None) -> Any:
        """The `DeltaTable` (at `version`), or None when there is no table there."""
        from deltalake.exceptions import TableNotFoundError

        try:
            return self.deltalake.DeltaTable(
                self.ref.address, version=version, storage_options=self.storage_options or None
            )
        except TableNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot open {self.ref.uri}: {e}") from e

    def _require(self, version: int | None = None) -> Any:
        table = self.open(version)
        if table is None:
            raise InputError(f"{self.ref.uri}: no Delta table there")
        return table

    def pin(self) -> int | None:
        return int(self._require().version())

    def schema(self, version: int | None) -> pa.Schema:
        return pa.schema(self._require(version).schema().to_arrow())

    def partitions(self, column: str, version: int | None) -> list[TablePartition]:
        table = self._require(version)
        if column not in table.metadata().partition_columns:
            raise InputError(
                f"SOURCE {self.ref.uri} is not partitioned by {column} (its partition columns: "
                f"{', '.join(table.metadata().partition_columns) or 'none'})"
            )
        actions = pa.table(table.get_add_actions(flatten=True))
        names = set(actions.column_names)
        extra = sorted(n for n in names if n.startswith("deletionVector"))
        grouped: dict[str, list[TableFile]] = {}
        for row in actions.to_pylist():
            value = row[f"partition.{column}"]
            value = "__HIVE_DEFAULT_PARTITION__" if value is None else str(value)
            deletion = [row[n] for n in extra]
            rows = row.get("num_records")
            known = rows is not None and not any(v is not None for v in deletion)
            grouped.setdefault(value, []).append(
                TableFile(
                    path=row["path"],
                    size=int(row["size_bytes"]),
                    mtime_ns=int(row["modification_time"] or 0) * 1_000_000,
                    key=_key(row["path"], row["size_bytes"], *deletion),
                    rows=int(rows) if known else None,
                )
            )
        return [
            TablePartition(value, tuple(sorted(files, key=lambda f: f.path)))
            for value, files in sorted(grouped.items())
        ]

    def batches(
        self, column: str, value: str, version: int | None, columns: list[str] | None
    ) -> pa.RecordBatchReader:
        table = self._require(version)
        dataset = table.to_pyarrow_dataset(partitions=[(column, "=", value)])
        return dataset.scanner(columns=columns).to_reader()

    def all_batches(self, version: int | None) -> pa.RecordBatchReader:
        return self._require(version).to_pyarrow_dataset().scanner().to_reader()

    def partition_columns(self) -> list[str]:
        table = self.open()
        return [] if table is None else list(table.metadata().partition_columns)

    def replace_all(
        self, schema: pa.Schema, batches: Iterator[pa.RecordBatch], record: str
    ) -> None:
        from deltalake import CommitProperties

        exists = self.open() is not None
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        try:  # one overwrite: the new rows and schema in one commit
            self.deltalake.write_deltalake(
                self.ref.address,
                reader,
                mode="overwrite" if exists else "append",
                schema_mode="overwrite" if exists else None,
                commit_properties=CommitProperties(custom_metadata={MANIFEST_KEY: record}),
                storage_options=self.storage_options or None,
            )
        except self.deltalake.exceptions.CommitFailedError as e:
            raise TransientError(f"{self.ref.uri}: commit failed: {e}") from e
        except (self.deltalake.exceptions.DeltaError, OSError, pa.ArrowException) as e:
            raise CommitError(f"{self.ref.uri}: cannot commit: {e}") from e

    def records(self, column: str) -> list[tuple[int, str]]:
        table = self.open()
        if table is None:
            return []
        found = []
        for entry in table.history():
            text = entry.get(MANIFEST_KEY)
            if text is not None and "version" in entry:
                found.append((int(entry["version"]), str(text)))
        return found

    def commit_problem(self, commit: TableCommit, rows: int) -> str | None:
        """None when the partition's data files now are exactly those its commit added."""
        table = self._require()
        added = self._added_by(commit)
        if added is None:
            return f"its commit (version {commit.commit_id}) is no longer in the table's log"
        current = {
            f.path: f
            for p in self.partitions(commit.column, None)
            if p.value == commit.value
            for f in p.files
        }
        del table
        if set(current) != added:
            return f"data files changed since its commit (version {commit.commit_id})"
        counted = [f.rows for f in current.values()]
        if all(c is not None for c in counted) and sum(c or 0 for c in counted) != rows:
            return f"holds {sum(c or 0 for c in counted):,} rows, the manifest says {rows:,}"
        return None

    def _added_by(self, commit: TableCommit) -> set[str] | None:
        """The paths of the partition's data files that the commit (a version) added, from
        its JSON log entry; None when the log entry is gone."""
        name = f"_delta_log/{commit.commit_id:020d}.json"
        try:
            if self.ref.local:
                data = (Path(self.ref.address) / name).read_bytes()
            else:
                location = parse_location(self.ref.address, delta_location_options(self.ref))
                data = (location / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            if "not found" in str(e).lower() or "does not exist" in str(e).lower():
                return None
            raise StorageError(f"cannot read the log of {self.ref.uri}: {e}") from e
        added: set[str] = set()
        for line in data.splitlines():
            action = json.loads(line) if line.strip() else {}
            add = action.get("add")
            if add and str((add.get("partitionValues") or {}).get(commit.column)) == commit.value:
                added.add(add["path"])
        return added

    def commit(
        self, column: str, value: str, reader: pa.RecordBatchReader, manifest_json: str
    ) -> None:
        from deltalake import CommitProperties

        exists = self.open() is not None
        properties = CommitProperties(custom_metadata={MANIFEST_KEY: manifest_json})
        options = self.storage_options or None
        try:
            if exists:  # replace exactly the partition: its rows match the predicate
                self.deltalake.write_deltalake(
                    self.ref.address,
                    reader,
                    partition_by=[column],
                    mode="overwrite",
                    predicate=f'"{column}" = {_quote(value)}',
                    commit_properties=properties,
                    storage_options=options,
                )
            else:  # the table's first commit creates it
                self.deltalake.write_deltalake(
                    self.ref.address,
                    reader,
                    partition_by=[column],
                    mode="append",
                    commit_properties=properties,
                    storage_options=options,
                )
        except self.deltalake.exceptions.CommitFailedError as e:
            raise TransientError(f"{self.ref.uri}: commit of {column}={value} failed: {e}") from e
        except (self.deltalake.exceptions.DeltaError, OSError, pa.ArrowException) as e:
            raise CommitError(f"{self.ref.uri}: cannot commit {column}={value}: {e}") from e

    def field_type(self, column: str) -> pa.DataType | None:
        table = self.open()
        if table is None:
            return None
        schema = pa.schema(table.schema().to_arrow())
        return schema.field(column).type if column in schema.names else None

    def lock_place(self) -> Path | Location:
        if self.ref.local:
            return Path(os.path.abspath(self.ref.address) + SIDECAR_SUFFIX)
        return parse_location(
            self.ref.address.rstrip("/") + SIDECAR_SUFFIX, delta_location_options(self.ref)
        )

    def count_commits(self) -> int:
        table = self.open()
        return 0 if table is None else int(table.version()) + 1


class _Iceberg:
    """Apache Iceberg through `pyiceberg`, the catalog from its own configuration."""

    def __init__(self, ref: TableRef) -> None:
        try:
            import pyiceberg.catalog  # noqa: F401
        except ImportError as e:
            raise missing_extra(ref, e) from e
        self.ref = ref
        self.catalog_name, _, self.identifier = ref.address.partition("/")
        self._catalog: Any = None

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
                    key=_key(file.file_path, file.file_size_in_bytes, *deletes),
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
            options = {k: v for k, v in self.ref.options if k in _DELTA_NAMES}
            return parse_location(f"{warehouse.rstrip('/')}/{name}", options)
        return Path(tempfile.gettempdir()) / "bertetl-locks" / _key(self.ref.uri)[:16]

    def count_commits(self) -> int:
        table = self.open()
        return 0 if table is None else len(table.metadata.metadata_log) + 1


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


def _format(ref: TableRef) -> _Delta | _Iceberg:
    return _Delta(ref) if ref.format == "delta" else _Iceberg(ref)


# -- options ----------------------------------------------------------------------------------

#: `--storage-option` keys (as for s3:// folders) -> deltalake's storage options.
_DELTA_NAMES = {
    "endpoint_url": "AWS_ENDPOINT_URL",
    "endpoint_override": "AWS_ENDPOINT_URL",
    "region": "AWS_REGION",
    "region_name": "AWS_REGION",
    "access_key": "AWS_ACCESS_KEY_ID",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_key": "AWS_SECRET_ACCESS_KEY",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
    "aws_session_token": "AWS_SESSION_TOKEN",
}


def delta_storage_options(ref: TableRef) -> dict[str, str]:
    """deltalake's `storage_options` for the table: bertetl's keys translated (an
    `http://` endpoint allows plain HTTP), deltalake's own keys (`AWS_...`) passed as given."""
    options: dict[str, str] = {}
    for key, value in ref.options:
        name = _DELTA_NAMES.get(key, key)
        options[name] = value
        if name == "AWS_ENDPOINT_URL" and value.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if not ref.local and ref.address.startswith(("s3://", "s3a://")):
        # deltalake's S3 commits need a conditional PUT (or a lock service) to be safe;
        # options or not (credentials may come from the environment alone)
        options.setdefault("AWS_CONDITIONAL_PUT", "etag")
    return options


def delta_location_options(ref: TableRef) -> dict[str, str]:
    """The table's options that bertetl's own object-store code takes (the lock, the log)."""
    return {key: value for key, value in ref.options if key in _DELTA_NAMES}


# -- what runs call ---------------------------------------------------------------------------


def check_table(ref: TableRef) -> None:
    """Fail early (a one-line `StorageError`) when the table's package is missing or its
    catalog cannot be loaded."""
    backend = _format(ref)
    if isinstance(backend, _Iceberg):
        _ = backend.catalog


def pin(ref: TableRef) -> TableSnapshot:
    """The SOURCE table at its current version or snapshot: what the whole run reads."""
    return TableSnapshot(ref, _format(ref).pin())


def source_schema(snapshot: TableSnapshot) -> pa.Schema:
    """The SOURCE table's Arrow schema."""
    return _format(snapshot.ref).schema(snapshot.version)


def source_partitions(snapshot: TableSnapshot, column: str) -> list[TablePartition]:
    """The pinned table's partitions of `column` and their data files, from metadata only
    (no row is read); an `InputError` when the table is not partitioned by `column`."""
    return _format(snapshot.ref).partitions(column, snapshot.version)


def materialize(snapshot: TableSnapshot, column: str, value: str, path: Path) -> int:
    """Read one partition of the pinned table (the partition filter pushed down) into a
    local Parquet file at `path`, without the partition column (its value is the
    partition's, as in a hive folder); returns its rows."""
    reader = _format(snapshot.ref).batches(column, value, snapshot.version, None)
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


def read_committed(
    ref: TableRef, column: str, value: str, fields: list[pa.Field], path: Path
) -> Path | None:
    """The partition's rows in the DEST table's current snapshot, the columns `fields`
    (converted back to their types: embeddings are list<float32> in a table), written to a
    local Parquet file for row reuse; None when they cannot be (then nothing is reused)."""
    names = [f.name for f in fields]
    reader = _format(ref).batches(column, value, None, names)
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
    for commit_id, text in _format(ref).records(column):
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
    present = set(_format(ref).schema(None).names)
    return (
        _format(ref).batches(column, value, None, [c for c in columns if c in present]).read_all()
    )


def commit_problem(commit: TableCommit, rows: int) -> str | None:
    """How the partition in the table differs from what its commit wrote (its data files
    are no longer exactly those that commit added, or their rows do not add up to `rows`);
    None when it is as committed."""
    return _format(commit.ref).commit_problem(commit, rows)


def table_type(data_type: pa.DataType) -> pa.DataType:
    """The type a column gets in a table: fixed-size lists (embeddings, scores) become
    lists (neither Delta nor Iceberg has a fixed-size list), large strings stay strings."""
    if pa.types.is_fixed_size_list(data_type):
        return pa.list_(table_type(data_type.value_type))
    return data_type


def commit_partition(
    ref: TableRef, column: str, value: str, files: list[Path], manifest_json: str
) -> None:
    """Replace the partition `column=value` of the DEST table with the rows of the staged
    Parquet `files` (the partition column added), in ONE table transaction that carries
    the manifest in its metadata. Readers see the old partition or the new one."""
    backend = _format(ref)
    schema = pq.read_schema(files[0]) if files else None
    if schema is None:
        raise CommitError(f"{ref.uri}: partition {column}={value} has no staged output")
    partition_type = backend.field_type(column) or pa.string()
    fields = [
        pa.field(f.name, table_type(f.type), metadata=f.metadata)
        for f in schema
        if f.name != column
    ]
    target = pa.schema([*fields, pa.field(column, partition_type)])

    def batches() -> Iterator[pa.RecordBatch]:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches():
                columns = [batch.column(f.name).cast(f.type) for f in fields]
                constant = pa.array([value] * batch.num_rows, pa.string()).cast(partition_type)
                yield pa.RecordBatch.from_arrays([*columns, constant], schema=target)

    reader = pa.RecordBatchReader.from_batches(target, batches())
    backend.commit(column, value, reader, manifest_json)


def lock_place(ref: TableRef) -> Path | Location:
    """Where DEST's one-run lock for a table lives (`bertetl.io.commit.destination_lock`
    takes it there): the sidecar folder `<table>.bertetl/` of a Delta table (local, or a
    prefix on S3); for Iceberg see `_Iceberg.lock_place`."""
    return _format(ref).lock_place()


def count_commits(ref: TableRef) -> int:
    """How many commits the table has had (Delta versions; Iceberg metadata versions, one
    per catalog commit): what a rerun with nothing to do must leave unchanged."""
    return _format(ref).count_commits()


# -- whole tables (`bertetl enrich`) ----------------------------------------------------------


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
    reader = _format(ref).all_batches(snapshot.version)
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
    return _format(ref).partition_columns()


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
    target = pa.schema(
        [pa.field(f.name, table_type(f.type), metadata=f.metadata) for f in dataset.schema]
    )

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in dataset.to_batches():
            yield pa.RecordBatch.from_arrays(
                [batch.column(f.name).cast(f.type) for f in target], schema=target
            )

    _format(ref).replace_all(target, batches(), record)
