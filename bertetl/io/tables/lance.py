"""Lance datasets through `pylance`: `lance://PATH_OR_URI`, a local folder (`lance:///data/d`,
`lance://relative/d`) or an S3 prefix (`lance://s3://bucket/d`).

Every commit is ONE Lance version whose transaction properties carry the manifest under
`MANIFEST_KEY` (`write_dataset(transaction_properties=...)`, or a `Transaction` committed with
`LanceDataset.commit`); `get_transactions` reads them back. A partition is replaced by one
`Update` transaction: its rows are deleted from the fragments that hold them (a deletion file, or
the whole fragment removed) and its new rows added as new fragments. Lance has no partitioning of
its own: a partition is the rows whose column holds its value, and a source partition's "files"
are the fragments holding them. Vector columns keep their fixed-size lists (a vector index
needs them). The keyed merge (`merge_keyed`) is one `merge_insert` transaction. DEST's lock is a
sidecar folder beside the dataset (`<dataset>.bertetl/`), as for Delta. See
docs/VECTOR_STORES.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

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


def quote_name(column: str) -> str:
    """A column name in a Lance filter (backticks)."""
    return "`" + column.replace("`", "``") + "`"


def literal(value: object) -> str:
    """A value in a Lance filter (SQL literal)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def partition_filter(column: str, value: str) -> str:
    """The rows of one partition, as a Lance filter."""
    if value == NULL_PARTITION:
        return f"{quote_name(column)} IS NULL"
    return f"{quote_name(column)} = {literal(value)}"


def keys_filter(keys: pa.Table) -> str | None:
    """The rows whose key (the columns of `keys`) is one of `keys`' rows; None for none."""
    if not keys.num_rows:
        return None
    names = keys.column_names
    if len(names) == 1:
        values = ", ".join(literal(v) for v in keys.column(0).to_pylist())
        return f"{quote_name(names[0])} IN ({values})"
    rows = (
        "(" + " AND ".join(f"{quote_name(n)} = {literal(row[n])}" for n in names) + ")"
        for row in keys.to_pylist()
    )
    return " OR ".join(rows)


class LanceFormat:
    """Lance datasets through `pylance`."""

    extra: ClassVar[str] = "lance"
    package: ClassVar[str] = "lance"  # the module; pip's name is pylance
    examples: ClassVar[tuple[str, ...]] = ("lance:///data/d", "lance://s3://bucket/d")
    #: Vector columns stay fixed-size lists (`bertetl.io.tables.dest.column_type`).
    fixed_size_lists: ClassVar[bool] = True

    @classmethod
    def parse(cls, text: str, options: tuple[tuple[str, str], ...]) -> TableRef:
        """`lance:///PATH` (a local dataset takes no options) or `lance://s3://BUCKET/PATH`."""
        scheme, rest = table_uri_parts(text)
        if not rest:
            raise StorageError(f"{text}: expected lance:///PATH or lance://s3://BUCKET/PATH")
        if is_uri(rest) and SCHEMES.get(rest.split("://", 1)[0].lower()) != "s3":
            raise StorageError(f"{text}: a Lance dataset is a local path or on s3://")
        if not is_uri(rest):
            options = ()
        return TableRef(scheme, f"{scheme}://{rest}", rest, options)

    @classmethod
    def is_local(cls, address: str) -> bool:
        return not is_uri(address)

    def __init__(self, ref: TableRef) -> None:
        try:
            import lance
        except ImportError as e:
            raise missing_extra(ref, e) from e
        self.lance = lance
        self.ref = ref
        self.storage_options = lance_storage_options(ref)

    def check(self) -> None:
        """Nothing to load before the dataset is opened (the package is, by the constructor)."""

    def open(self, version: int | None = None) -> Any:
        """The `LanceDataset` (at `version`), or None when there is no dataset there."""
        try:
            return self.lance.dataset(
                self.ref.address, version=version, storage_options=self.storage_options or None
            )
        except (ValueError, FileNotFoundError) as e:
            if "not found" in str(e).lower() or isinstance(e, FileNotFoundError):
                return None
            raise StorageError(f"cannot open {self.ref.uri} as a Lance dataset: {e}") from e
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StorageError(f"cannot open {self.ref.uri} as a Lance dataset: {first}") from e

    def _require(self, version: int | None = None) -> Any:
        dataset = self.open(version)
        if dataset is None:
            raise InputError(f"{self.ref.uri}: no Lance dataset there")
        return dataset

    def holds_rows(self) -> bool:
        dataset = self.open()
        return dataset is not None and dataset.count_rows() > 0

    def pin(self) -> int | None:
        return int(self._require().version)

    def schema(self, version: int | None) -> pa.Schema:
        return pa.schema(self._require(version).schema)

    def partitions(self, column: str, version: int | None) -> list[TablePartition]:
        """Each value of `column` and the fragments holding its rows (one column is read)."""
        dataset = self._require(version)
        if column not in dataset.schema.names:
            raise InputError(f"SOURCE {self.ref.uri} has no column {column}")
        grouped: dict[str, list[TableFile]] = {}
        for fragment in dataset.get_fragments():
            meta = fragment.metadata
            files = [(f.path, f.file_size_bytes) for f in meta.files]
            deletion = meta.deletion_file
            key = file_key(fragment.fragment_id, *files, deletion)
            size = sum(int(s or 0) for _, s in files)
            counts = pc.value_counts(fragment.to_table(columns=[column]).column(column))
            for item in counts.to_pylist():
                value = NULL_PARTITION if item["values"] is None else str(item["values"])
                grouped.setdefault(value, []).append(
                    TableFile(f"fragment-{fragment.fragment_id}", size, 0, key, item["counts"])
                )
        return [TablePartition(value, tuple(files)) for value, files in sorted(grouped.items())]

    def batches(
        self, column: str, value: str, version: int | None, columns: list[str] | None
    ) -> pa.RecordBatchReader:
        dataset = self._require(version)
        return dataset.scanner(columns=columns, filter=partition_filter(column, value)).to_reader()

    def all_batches(self, version: int | None) -> pa.RecordBatchReader:
        return self._require(version).scanner().to_reader()

    def partition_columns(self) -> list[str]:
        return []  # Lance has no partitioning: a partition is the rows holding its value

    def field_type(self, column: str) -> pa.DataType | None:
        dataset = self.open()
        if dataset is None or column not in dataset.schema.names:
            return None
        return dataset.schema.field(column).type

    def _write(self, reader: pa.RecordBatchReader, record: str, mode: str) -> Any:
        try:
            return self.lance.write_dataset(
                reader,
                self.ref.address,
                mode=mode,
                storage_options=self.storage_options or None,
                transaction_properties={MANIFEST_KEY: record},
            )
        except OSError as e:
            raise CommitError(f"{self.ref.uri}: cannot commit: {e}") from e

    def replace_all(
        self, schema: pa.Schema, batches: Iterator[pa.RecordBatch], record: str
    ) -> None:
        exists = self.open() is not None
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        self._write(reader, record, "overwrite" if exists else "create")

    def commit(
        self, column: str, value: str, reader: pa.RecordBatchReader, manifest_json: str
    ) -> None:
        """One `Update` version: the partition's rows deleted where they are, its new rows
        added as new fragments, the manifest in the transaction's properties."""
        from lance import LanceDataset, LanceOperation
        from lance.dataset import Transaction
        from lance.fragment import write_fragments

        dataset = self.open()
        if dataset is None:
            self._write(reader, manifest_json, "create")
            return
        where = partition_filter(column, value)
        removed, updated = [], []
        for fragment in dataset.get_fragments():
            if not fragment.count_rows(where):
                continue
            left = fragment.delete(where)
            if left is None:
                removed.append(fragment.fragment_id)
            else:
                updated.append(left)
        try:
            new = write_fragments(reader, dataset, storage_options=self.storage_options or None)
            operation = LanceOperation.Update(
                removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new
            )
            transaction = Transaction(
                dataset.version, operation, transaction_properties={MANIFEST_KEY: manifest_json}
            )
            LanceDataset.commit(
                self.ref.address,
                transaction,
                read_version=dataset.version,
                storage_options=self.storage_options or None,
                max_retries=0,
            )
        except OSError as e:
            if "conflict" in str(e).lower() or "retry" in str(e).lower():
                raise TransientError(
                    f"{self.ref.uri}: commit of {column}={value} failed: {e}"
                ) from e
            raise CommitError(f"{self.ref.uri}: cannot commit {column}={value}: {e}") from e

    def commit_transaction(self, dataset: Any, transaction: Any, record: str) -> None:
        """Commit a transaction built on `dataset` (a merge) with `record` in its properties."""
        from lance import LanceDataset

        transaction.transaction_properties = {MANIFEST_KEY: record}
        try:
            LanceDataset.commit(
                self.ref.address,
                transaction,
                read_version=dataset.version,
                storage_options=self.storage_options or None,
            )
        except OSError as e:
            raise CommitError(f"{self.ref.uri}: cannot commit: {e}") from e

    def merge_keyed(
        self,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
    ) -> None:
        """The format's keyed merge (`TableFormat.merge_keyed`): `merge_table` of the rows."""
        self.merge_table(pa.Table.from_batches(list(batches), schema=schema), deletes, key, record)

    def merge_table(
        self,
        rows: pa.Table,
        deletes: pa.Table | None,
        key: list[str],
        record: str,
        partition: tuple[str, str] | None = None,
    ) -> bool:
        """One `merge_insert` version: matched keys updated, new keys inserted, and the rows
        whose key is in `deletes` removed (`when_not_matched_by_source_delete` with a filter
        naming those keys, so the upsert and the delete are one version), carrying `record`.
        With `partition` (column, value), the column joins the key and bounds the delete, so
        only that partition's rows are touched. False, and no version, for nothing to do."""
        deleted = None if deletes is None else keys_filter(deletes.select(key))
        if not rows.num_rows and deleted is None:
            return False
        dataset = self.open()
        if dataset is None:
            if not rows.num_rows:
                return False  # nothing to delete from, nothing to add
            self._write(rows.to_reader(), record, "create")
            return True
        on = [*key, partition[0]] if partition is not None else list(key)
        if deleted is not None and partition is not None:
            deleted = f"({deleted}) AND {partition_filter(*partition)}"
        builder = dataset.merge_insert(on).when_matched_update_all().when_not_matched_insert_all()
        if deleted is not None:
            builder = builder.when_not_matched_by_source_delete(deleted)
        target = dataset.schema
        schema = pa.schema(
            [target.field(f.name) if f.name in target.names else f for f in rows.schema]
        )
        try:
            transaction, _ = builder.execute_uncommitted(rows.cast(schema))
        except (OSError, ValueError) as e:
            raise CommitError(f"{self.ref.uri}: cannot merge by {', '.join(key)}: {e}") from e
        self.commit_transaction(dataset, transaction, record)
        return True

    def keyed_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The rows' `columns` (those that exist); nothing without a dataset."""
        dataset = self.open()
        if dataset is None:
            return
        names = dataset.schema.names
        wanted = list(dict.fromkeys(c for c in columns if c in names))
        yield from dataset.scanner(columns=wanted).to_batches()

    def last_record(self) -> str | None:
        found = self.records("")
        return str(found[0][1]) if found else None

    def refresh_index(self, kind: str, column: str, metric: str, params: dict[str, int]) -> None:
        """Build a vector index of `kind` (`ivf_pq`, `ivf_hnsw_sq`) on `column` when there is
        none, or add the rows it does not cover yet (`optimize_indices`); nothing (no new
        version) when it covers every row."""
        dataset = self.open()
        if dataset is None or column not in dataset.schema.names:
            return
        existing = [i for i in dataset.list_indices() if column in i["fields"]]
        if not existing:
            dataset.create_index(column, index_type=kind.upper(), metric=metric, **params)
            return
        if dataset.stats.index_stats(existing[0]["name"]).get("num_unindexed_rows", 0):
            dataset.optimize.optimize_indices()

    def history(self) -> list[tuple[int, Any]]:
        """(version, transaction) of every version, newest first."""
        dataset = self.open()
        if dataset is None:
            return []
        current = int(dataset.version)
        transactions = dataset.get_transactions(current)
        return [(current - i, t) for i, t in enumerate(transactions) if t is not None]

    def records(self, column: str) -> list[tuple[int, str]]:
        found = []
        for version, transaction in self.history():
            text = (transaction.transaction_properties or {}).get(MANIFEST_KEY)
            if text is not None:
                found.append((version, str(text)))
        return found

    def commit_problem(self, commit: TableCommit, rows: int) -> str | None:
        """None when the fragments holding the partition's rows now are exactly those that
        held them in its commit's version (same data and deletion files), with `rows` rows."""
        where = partition_filter(commit.column, commit.value)
        try:
            then = self.open(commit.commit_id)
        except StorageError:
            then = None
        if then is None:
            return f"its commit (version {commit.commit_id}) is no longer in the dataset"
        now = self._require()
        if _holding(now, where) != _holding(then, where):
            return f"fragments changed since its commit (version {commit.commit_id})"
        counted = now.count_rows(where)
        if counted != rows:
            return f"holds {counted:,} rows, the manifest says {rows:,}"
        return None

    def lock_place(self) -> Path | Location:
        if self.ref.local:
            return Path(os.path.realpath(self.ref.address) + SIDECAR_SUFFIX)
        return parse_location(
            self.ref.address.rstrip("/") + SIDECAR_SUFFIX, location_options(self.ref)
        )

    def count_commits(self) -> int:
        dataset = self.open()
        return 0 if dataset is None else int(dataset.version)


def _holding(dataset: Any, where: str) -> set[str]:
    """The fragments of `dataset` holding rows that match `where`, each by its files."""
    found = set()
    for fragment in dataset.get_fragments():
        if fragment.count_rows(where):
            meta = fragment.metadata
            deletion = meta.deletion_file
            found.add(
                file_key(
                    fragment.fragment_id,
                    *(f.path for f in meta.files),
                    None if deletion is None else (deletion.id, deletion.num_deleted_rows),
                )
            )
    return found


def lance_storage_options(ref: TableRef) -> dict[str, str]:
    """Lance's `storage_options` (object_store's keys) for the dataset: bertetl's keys
    translated (an `http://` endpoint allows plain HTTP), Lance's own keys passed as given."""
    options: dict[str, str] = {}
    for key, value in ref.options:
        name = AWS_OPTION_NAMES.get(key, key)
        options[name.lower() if name != key else key] = value
        if name == "AWS_ENDPOINT_URL" and value.startswith("http://"):
            options["allow_http"] = "true"
    return options


def record_of(transaction: Any) -> str | None:
    """The manifest a version's transaction carries, or None."""
    text = (transaction.transaction_properties or {}).get(MANIFEST_KEY)
    return None if text is None else str(text)


#: The class implements the protocol (mypy checks this line).
_IMPLEMENTS: type[TableFormat] = LanceFormat
