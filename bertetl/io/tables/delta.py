"""Delta Lake tables through `deltalake` (delta-rs): `delta://PATH_OR_URI`, a local folder
(`delta:///data/t`, `delta://relative/t`) or an S3 prefix (`delta://s3://bucket/t`).

A partition is replaced by `write_deltalake(mode="overwrite", predicate=...)`, the manifest in
the commit info; `DeltaTable.history()` reads it back, and the `add` actions of a version's
log entry tell which data files a commit wrote. DEST's lock is in a sidecar folder beside the
table (`<table>.bertetl/`, local or on S3). See docs/STORAGE.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from bertetl.errors import CommitError, InputError, TransientError
from bertetl.io.stores.locations import (
    SCHEMES,
    Location,
    StorageError,
    TableRef,
    is_uri,
    parse_location,
    table_uri_parts,
)
from bertetl.io.tables.base import (
    AWS_OPTION_NAMES,
    MANIFEST_KEY,
    NULL_PARTITION,
    SIDECAR_SUFFIX,
    TableCommit,
    TableFile,
    TableFormat,
    TablePartition,
    file_key,
    location_options,
    missing_extra,
)

#: The column that marks a MERGE source row as a delete (never written to the table).
DELETE_MARK = "__bertetl_delete"


def _merge_source(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch], deletes: pa.Table | None
) -> pa.Table:
    """The MERGE's source: the rows to upsert, then the keys to delete (other columns null),
    each marked. Held in memory: the rows that changed in this run, not the table."""
    marked = schema.append(pa.field(DELETE_MARK, pa.bool_()))
    parts = [
        pa.RecordBatch.from_arrays(
            [*batch.columns, pa.array([False] * batch.num_rows)], schema=marked
        )
        for batch in batches
    ]
    if deletes is not None and deletes.num_rows:
        n = deletes.num_rows
        columns = [
            deletes.column(f.name).cast(f.type)
            if f.name in deletes.column_names
            else pa.nulls(n, f.type)
            for f in schema
        ]
        parts.append(
            pa.RecordBatch.from_arrays(
                [
                    *(c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns),
                    pa.array([True] * n),
                ],
                schema=marked,
            )
        )
    return pa.Table.from_batches(parts, schema=marked)


def _spelled(raw: object) -> str:
    """A partition value as bertetl names it (`NULL_PARTITION` for a null; Delta stores an
    empty string as null too)."""
    return NULL_PARTITION if raw is None or raw == "" else str(raw)


def _predicate(column: str, value: str) -> str:
    """The rows of one partition, as a deltalake predicate."""
    if value == NULL_PARTITION:
        return f'"{column}" IS NULL'
    return f'"{column}" = {_quote(value)}'


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class DeltaFormat:
    """Delta Lake through `deltalake` (delta-rs)."""

    extra: ClassVar[str] = "delta"
    package: ClassVar[str] = "deltalake"
    examples: ClassVar[tuple[str, ...]] = ("delta:///data/t", "delta://s3://bucket/t")

    @classmethod
    def parse(cls, text: str, options: tuple[tuple[str, str], ...]) -> TableRef:
        """`delta:///PATH` (a local table takes no options: `resolve_run` refuses them) or
        `delta://s3://BUCKET/PATH`."""
        scheme, rest = table_uri_parts(text)
        if not rest:
            raise StorageError(f"{text}: expected delta:///PATH or delta://s3://BUCKET/PATH")
        if is_uri(rest) and SCHEMES.get(rest.split("://", 1)[0].lower()) != "s3":
            raise StorageError(f"{text}: a Delta table is a local path or on s3://")
        if not is_uri(rest):
            options = ()
        return TableRef(scheme, f"{scheme}://{rest}", rest, options)

    @classmethod
    def is_local(cls, address: str) -> bool:
        return not is_uri(address)

    def __init__(self, ref: TableRef) -> None:
        try:
            import deltalake
        except ImportError as e:
            raise missing_extra(ref, e) from e
        self.deltalake = deltalake
        self.ref = ref
        self.storage_options = delta_storage_options(ref)

    def check(self) -> None:
        """Nothing to load before the table is opened (the package is, by the constructor)."""

    def open(self, version: int | None = None) -> Any:
        """The `DeltaTable` (at `version`), or None when there is no table there."""
        from deltalake.exceptions import TableNotFoundError

        try:
            return self.deltalake.DeltaTable(
                self.ref.address, version=version, storage_options=self.storage_options or None
            )
        except TableNotFoundError:
            return None
        except (OSError, self.deltalake.exceptions.DeltaError) as e:  # e.g. a file, not a table
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StorageError(f"cannot open {self.ref.uri} as a Delta table: {first}") from e

    def holds_rows(self) -> bool:
        table = self.open()
        return table is not None and bool(table.file_uris())

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
            value = _spelled(row[f"partition.{column}"])
            deletion = [row[n] for n in extra]
            rows = row.get("num_records")
            known = rows is not None and not any(v is not None for v in deletion)
            grouped.setdefault(value, []).append(
                TableFile(
                    path=row["path"],
                    size=int(row["size_bytes"]),
                    mtime_ns=int(row["modification_time"] or 0) * 1_000_000,
                    key=file_key(row["path"], row["size_bytes"], *deletion),
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
        if value == NULL_PARTITION:  # null (or, in Delta, empty): no partition filter says so
            import pyarrow.compute as pc

            dataset = table.to_pyarrow_dataset()
            return dataset.scanner(columns=columns, filter=pc.field(column).is_null()).to_reader()
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
            values = (add or {}).get("partitionValues") or {}
            if add and _spelled(values.get(commit.column)) == commit.value:
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
                    predicate=_predicate(column, value),
                    schema_mode="merge",  # a column new in SOURCE is added (nulls before it)
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

    def merge_keyed(
        self,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
    ) -> None:
        """deltalake's MERGE: one commit that updates matched keys, inserts new ones and
        deletes the keys in `deletes` (rows of the source marked `DELETE_MARK`)."""
        from deltalake import CommitProperties

        properties = CommitProperties(custom_metadata={MANIFEST_KEY: record})
        options = self.storage_options or None
        table = self.open()
        try:
            if table is None:  # the first commit creates the table (nothing to delete)
                self.deltalake.write_deltalake(
                    self.ref.address,
                    pa.RecordBatchReader.from_batches(schema, batches),
                    mode="append",
                    commit_properties=properties,
                    storage_options=options,
                )
                return
            source = _merge_source(schema, batches, deletes)
            on = " AND ".join(f"t.`{name}` = s.`{name}`" for name in key)
            marked = f"s.`{DELETE_MARK}`"
            (
                table.merge(
                    source,
                    on,
                    source_alias="s",
                    target_alias="t",
                    merge_schema=True,
                    commit_properties=properties,
                )
                .when_matched_delete(predicate=f"{marked} = true")
                .when_matched_update_all(predicate=f"{marked} = false", except_cols=[DELETE_MARK])
                .when_not_matched_insert_all(
                    predicate=f"{marked} = false", except_cols=[DELETE_MARK]
                )
                .execute()
            )
        except self.deltalake.exceptions.CommitFailedError as e:
            raise TransientError(f"{self.ref.uri}: merge failed: {e}") from e
        except (self.deltalake.exceptions.DeltaError, OSError, pa.ArrowException) as e:
            raise CommitError(f"{self.ref.uri}: cannot merge: {e}") from e

    def keyed_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        table = self.open()
        if table is None:
            return
        dataset = table.to_pyarrow_dataset()
        present = [name for name in columns if name in dataset.schema.names]
        yield from dataset.to_batches(columns=present)

    def last_record(self) -> str | None:
        found = self.records("")
        return max(found)[1] if found else None

    def field_type(self, column: str) -> pa.DataType | None:
        table = self.open()
        if table is None:
            return None
        schema = pa.schema(table.schema().to_arrow())
        return schema.field(column).type if column in schema.names else None

    def lock_place(self) -> Path | Location:
        if self.ref.local:
            # the real path: one table reached through a link has one lock
            return Path(os.path.realpath(self.ref.address) + SIDECAR_SUFFIX)
        return parse_location(
            self.ref.address.rstrip("/") + SIDECAR_SUFFIX, delta_location_options(self.ref)
        )

    def count_commits(self) -> int:
        table = self.open()
        return 0 if table is None else int(table.version()) + 1


def delta_storage_options(ref: TableRef) -> dict[str, str]:
    """deltalake's `storage_options` for the table: bertetl's keys translated (an
    `http://` endpoint allows plain HTTP), deltalake's own keys (`AWS_...`) passed as given."""
    options: dict[str, str] = {}
    for key, value in ref.options:
        name = AWS_OPTION_NAMES.get(key, key)
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
    return location_options(ref)


#: The class implements the protocol (mypy checks this line).
_IMPLEMENTS: type[TableFormat] = DeltaFormat
