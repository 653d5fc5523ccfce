"""What every table format implements (`TableFormat`), and the records the shared code and the
formats pass between them: a source partition's data files, a pinned snapshot, a commit that
carries a manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import pyarrow as pa

from bertetl.io.stores.locations import Location, StorageError, TableRef
from bertetl.io.tables.registry import format_class

#: The key of the manifest in a commit's metadata (Delta commit info, Iceberg summary).
MANIFEST_KEY = "bertetl.manifest"
#: How a null partition value is spelled where a name is needed (a partition's value, its
#: folder under a DEST of files): Hive's, which Spark and Delta use too. Its rows are read with
#: `IS NULL` and written back as null into a table.
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
#: The sidecar beside a table that holds DEST's lock (`<table>.bertetl/.bertetl.lock`).
SIDECAR_SUFFIX = ".bertetl"

#: `--storage-option` keys (as for s3:// folders) -> the AWS names (deltalake's storage
#: options); the keys are also those bertetl's own object-store code takes for a table's
#: lock and log (`location_options`).
AWS_OPTION_NAMES = {
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


class TableFormat(Protocol):
    """One table format: how its address parses (class methods, for
    `bertetl.io.stores.locations`) and a table of it opened on a `TableRef` (the constructor
    fails with `missing_extra` when the format's package is not installed). The shared code in
    `source` and `dest` does the rest (materializing, casting, manifests); a format only reads
    and commits its own metadata.

    `version` is the format's pinned version or snapshot id (None: the current one); a
    commit's `commit_id` is what `records` returns and `commit_problem` takes."""

    #: The extra that brings the format's package, and the package (`pip install 'bertetl[X]'`).
    extra: ClassVar[str]
    package: ClassVar[str]
    #: Addresses it takes, one per form (for errors, docs and the registry's contract test).
    examples: ClassVar[tuple[str, ...]]

    @classmethod
    def parse(cls, text: str, options: tuple[tuple[str, str], ...]) -> TableRef:
        """`SCHEME://ADDRESS` as a `TableRef` of this format (a `StorageError` naming the
        expected form otherwise); `options` are the sorted storage options given."""
        ...

    @classmethod
    def is_local(cls, address: str) -> bool:
        """Whether a table at `address` is in a local folder (`TableRef.local`)."""
        ...

    def __init__(self, ref: TableRef) -> None: ...

    def check(self) -> None:
        """Fail early (a one-line `StorageError`) when the table cannot be reached at all
        (e.g. its catalog cannot be loaded)."""
        ...

    def pin(self) -> int | None:
        """The current version (None: an empty table); an `InputError` when there is none."""
        ...

    def schema(self, version: int | None) -> pa.Schema: ...

    def partitions(self, column: str, version: int | None) -> list[TablePartition]:
        """The partitions of `column` and their data files, sorted, from metadata only."""
        ...

    def batches(
        self, column: str, value: str, version: int | None, columns: list[str] | None
    ) -> pa.RecordBatchReader:
        """The rows of one partition (the filter pushed down), `columns` or all."""
        ...

    def all_batches(self, version: int | None) -> pa.RecordBatchReader:
        """Every row, with each field's Arrow metadata as it was written."""
        ...

    def partition_columns(self) -> list[str]: ...

    def field_type(self, column: str) -> pa.DataType | None:
        """The column's type in the table (None: no table, or no such column)."""
        ...

    def commit(
        self, column: str, value: str, reader: pa.RecordBatchReader, manifest_json: str
    ) -> None:
        """Replace the partition `column=value` with `reader`'s rows in ONE transaction that
        carries `manifest_json` under `MANIFEST_KEY` (the table created when there is none,
        partitioned by `column`)."""
        ...

    def replace_all(
        self, schema: pa.Schema, batches: Iterator[pa.RecordBatch], record: str
    ) -> None:
        """Replace every row and the schema in ONE transaction carrying `record`."""
        ...

    def records(self, column: str) -> list[tuple[int, str]]:
        """(commit id, text under `MANIFEST_KEY`) of the commits that carry one, newest first."""
        ...

    def merge_keyed(
        self,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
    ) -> None:
        """In ONE transaction carrying `record`: rows of `batches` replace the rows of their
        key or are added (new columns added to the table), and the rows whose key is in
        `deletes` are removed; the table is created when there is none."""
        ...

    def keyed_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The current rows' `columns` (those the table has); nothing when there is no table."""
        ...

    def last_record(self) -> str | None:
        """The text under `MANIFEST_KEY` of the newest commit that carries one."""
        ...

    def commit_problem(self, commit: TableCommit, rows: int) -> str | None:
        """How the partition differs from what `commit` wrote; None when it is as committed."""
        ...

    def lock_place(self) -> Path | Location:
        """Where DEST's one-run lock lives (`bertetl.io.commit.destination_lock`)."""
        ...

    def count_commits(self) -> int: ...

    def holds_rows(self) -> bool:
        """Whether the table exists and holds data files (rows a commit could replace)."""
        ...


def format_of(ref: TableRef) -> type[TableFormat]:
    """The registered format of `ref`."""
    found: type[TableFormat] = format_class(ref.format)
    return found


def open_table(ref: TableRef) -> TableFormat:
    """`ref` opened by its format (nothing read yet)."""
    return format_of(ref)(ref)


def missing_extra(ref: TableRef, error: ImportError) -> StorageError:
    """A missing package of the table's format as one line naming the extra."""
    found = format_of(ref)
    return StorageError(
        f"{ref.uri} needs {found.package}: pip install 'bertetl[{found.extra}]' ({error})"
    )


def file_key(*parts: object) -> str:
    """A data file's content key from what names it (path, size, deletes)."""
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()


def location_options(ref: TableRef) -> dict[str, str]:
    """The table's options that bertetl's own object-store code takes (the lock, the log)."""
    return {key: value for key, value in ref.options if key in AWS_OPTION_NAMES}
