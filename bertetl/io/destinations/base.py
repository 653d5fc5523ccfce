"""The `Destination` protocol: every place a run writes, asked rather than inspected.

A destination is parsed once from DEST (`bertetl.io.destinations.parse_destination`) and then
answers for itself: its lock, its staging area, cleaning an earlier attempt's leftovers,
where a partition goes and what bertetl owns there, committing a partition with its manifest,
the manifests it holds, verifying outputs against them, refusing files it did not write, where
a drift plot goes, the sink an output file is written through, and its `Capabilities`. Code
above `bertetl.io` never asks "is this remote, is this a table": it asks the destination.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import pyarrow as pa

from bertetl.io import commit as commits
from bertetl.io import manifest as manifests
from bertetl.io.manifest import Manifest, OutputDamage
from bertetl.io.partitions import Partition
from bertetl.io.sink import SinkFactory
from bertetl.io.vector_index import IndexSpec

#: How a destination makes a commit atomic: a staged folder swapped in (`swap`), objects
#: uploaded whole then the manifest written last (`manifest-last`), one table transaction
#: (`transaction`).
CommitKind = Literal["swap", "manifest-last", "transaction"]


@dataclass(frozen=True)
class Capabilities:
    """What a destination can do; runs branch on these, never on its kind."""

    #: How a commit is made atomic.
    commit: CommitKind
    #: Outputs are Parquet files under DEST, one per input file, that readers list (a folder
    #: or prefix, which a plot can go into); False: rows of one table, committed whole.
    files: bool
    #: Written through an object-store client: an executor needs `object_storage` for it.
    object_storage: bool
    #: Its staging is reachable from every node of a cluster (workers could write into it).
    every_node: bool
    #: It can merge rows by key (upsert and delete) in one commit: it has `merge_keyed`,
    #: `keyed_rows` and `last_record` (`KeyedDestination`).
    merge_by_key: bool = False
    #: A whole run must be merged by key (`--key`): it cannot replace every row in one commit.
    requires_key: bool = False
    #: The vector indexes it builds (`--index`); empty: none.
    indexes: tuple[str, ...] = ()


@runtime_checkable
class KeyedDestination(Protocol):
    """What a destination with `capabilities.merge_by_key` adds: one commit that upserts and
    deletes rows by key, the committed rows' keys, and the record of the last commit."""

    def merge_keyed(
        self,
        upserts: list[Path],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
        partition: Partition | None = None,
    ) -> bool:
        """In ONE commit: the rows of the staged Parquet files `upserts` replace (by `key`) or
        add rows; rows whose key is in `deletes` (a table of just the key columns) are removed;
        the commit carries `record` (bertetl's manifest, a JSON string). `partition`: the
        commit touches only that partition's rows (None: the whole table). Returns False and
        commits nothing when upserts are empty and deletes empty/None."""

    def keyed_rows(self, key: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The committed rows' key columns plus `columns` (those that exist), streamed in
        batches; nothing when the destination is empty or does not exist yet."""

    def last_record(self) -> str | None:
        """The `record` of the last bertetl commit, or None."""


@runtime_checkable
class Destination(Protocol):
    """One place a run writes (a local folder, an object-store prefix, a Delta or Iceberg
    table). `place` is what the `bertetl.io` functions take (a `Path`, a `Location`, a
    `TableRef`); nothing above `bertetl.io` looks inside it."""

    place: Any
    #: The user knowingly lets a run replace what bertetl did not write where a kind allows
    #: it (`--overwrite-foreign`: a table with no bertetl commit).
    overwrite_foreign: bool
    #: The vector index to build after each commit (`--index`; a kind of
    #: `capabilities.indexes`), or None.
    index: IndexSpec | None

    @property
    def kind(self) -> str:
        """Its name in `DESTINATIONS`."""

    @property
    def capabilities(self) -> Capabilities:
        """What it can do."""

    @property
    def sink(self) -> SinkFactory:
        """Makes the sink an output file at a target is written through (`OutputSink`)."""

    @property
    def uri(self) -> str:
        """DEST as users name it."""

    def lock(self) -> Any:
        """The one-run lock: a context manager with `acquire`/`release`."""

    def holding(self) -> contextlib.AbstractContextManager[None]:
        """Take the lock and keep it for the code inside (`bertetl.io.commit.holding`)."""

    def staging(self) -> contextlib.AbstractContextManager[Path]:
        """A fresh local staging folder for this DEST, removed on exit."""

    def node_staging(self) -> contextlib.AbstractContextManager[Any]:
        """A fresh staging place every node of a cluster reaches (`capabilities.every_node`):
        workers write parts and outputs there, the driver commits from it; removed on exit,
        and by `clean_leftovers` after a killed run. Others refuse in one line."""

    def clean_leftovers(self, only_file: str | None = None) -> int:
        """Remove what a killed run left (call holding the lock); how many were removed."""

    def check(self) -> None:
        """Refuse (one line) a DEST that cannot be reached or written."""

    def root_for(self, source: object) -> tuple[Destination, str | None]:
        """The destination a run over `source` locks and cleans, and the one output file
        name when DEST names that file (`DEST.parquet` for a one-file SOURCE)."""

    def output_target(self, file: Any, source: object) -> Any:
        """Where an input file's output goes (a path or object-store location)."""

    def check_outputs_replaceable(self, targets: list[Any]) -> None:
        """Refuse files bertetl did not write at this run's output paths."""

    def partition_target(self, partition: Partition) -> Any:
        """Where a partition is committed (its folder, or the table itself)."""

    def check_foreign(self, partitions: list[Partition]) -> dict[str, frozenset[str]]:
        """Refuse partitions whose place holds what bertetl did not write; returns what
        bertetl owns there, by partition value."""

    def commit_partition(
        self,
        target: Any,
        staged: Any,
        manifest: Manifest,
        owned: frozenset[str],
        files: list[Any],
    ) -> Manifest:
        """Commit a staged partition (`files`, under `staged`: a local folder, or where
        `node_staging` put it) with its manifest, atomically."""

    def committed_manifests(self, column: str | None = None) -> dict[str, tuple[Any, Manifest]]:
        """The committed manifests by partition value, with where each was read from."""

    def verify(self, where: Any, manifest: Manifest) -> list[OutputDamage]:
        """How the outputs `manifest` lists differ from what `where` holds (empty: verified)."""

    def earlier_outputs(
        self,
        target: Any,
        partition: Partition,
        outputs: list[str],
        damaged: bool,
        fields: list[pa.Field],
        scratch: Path,
    ) -> list[Any]:
        """The earlier outputs of a partition whose rows may be reused (files to read):
        `outputs` are those of its last commit that verified; `damaged`, whether any did not."""

    def committed_outputs(self) -> tuple[list[Any], list[Any]]:
        """The output files a reader may read and the damaged ones (`bertetl.io.verify`);
        destinations with `capabilities.files`."""

    @property
    def shown_root(self) -> Any:
        """What paths in reports are shown relative to (`capabilities.files`)."""

    def check_replace_all(self) -> None:
        """Refuse (one line) a DEST that cannot take a whole run in one commit
        (`capabilities.files` false)."""

    def replace_all(self, staged: Path, files: list[Path], rows: int, record: str) -> None:
        """Replace everything in DEST with the staged `files` in one commit carrying the run's
        `record` (`capabilities.files` false)."""

    def relative(self, folder: Any) -> str:
        """A partition folder's path below DEST (destinations with `capabilities.files`)."""

    def file_path(self, relative: str) -> Any:
        """A file of the run's own under DEST (a drift plot), or None where DEST has no
        folder to hold one (a table)."""

    def overlaps(self, source: object) -> bool:
        """Whether SOURCE and this DEST are one place, or one holds the other."""

    # A keyed run (`--key`, `bertetl.runs.keyed`): a destination with `capabilities.files`
    # has its output files rewritten one by one and a record written last; one with
    # `capabilities.merge_by_key` merges the changed rows and deletes in one commit.

    def existing_outputs(self) -> list[Any]:
        """bertetl's output files under DEST now (`capabilities.files`)."""

    def read_record(self, name: str) -> str | None:
        """DEST's file `name`, None when absent (`capabilities.files`)."""

    def write_record(self, name: str, text: str) -> None:
        """Write DEST's file `name` whole: a keyed run's commit point (`capabilities.files`)."""

    def remove_outputs(self, targets: list[Any]) -> int:
        """Delete output files bertetl wrote (`capabilities.files`)."""

    def merge_keyed(
        self,
        upserts: list[Path],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
        partition: Partition | None = None,
    ) -> bool:
        """In ONE commit carrying `record`: the rows of the staged Parquet `upserts` replace
        (by `key`) or add rows, and the rows whose key is in `deletes` are removed; False,
        and no commit, when there is nothing to do (`capabilities.merge_by_key`)."""

    def keyed_rows(self, key: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The committed rows' key columns and `columns` (those there are), streamed."""

    def last_record(self) -> str | None:
        """The `record` of the last keyed commit (`capabilities.merge_by_key`)."""


def staged_rows(files: list[Path], partition: Partition | None) -> pa.Table:
    """The staged Parquet files' rows (the partition column added, as a string, when
    `partition` is given and they lack it: a partition's staged files do)."""
    import pyarrow.parquet as pq

    from bertetl.io.tables.base import NULL_PARTITION

    tables = [pq.read_table(f) for f in files]
    rows = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    if partition is not None and partition.column not in rows.column_names:
        value = None if partition.value == NULL_PARTITION else partition.value
        rows = rows.append_column(partition.column, pa.array([value] * rows.num_rows, pa.string()))
    return rows


class PlacedDestination:
    """What every kind shares, around its `place`: its name and equality (by URI), the sink
    of its staged output files (Parquet), and its lock, staging and cleaning, which
    `bertetl.io.commit` does for every kind of place."""

    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, place: Any) -> None:
        self.place = place
        self.overwrite_foreign = False
        #: The vector index to build and keep up to date (`--index`); None: none.
        self.index: IndexSpec | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.uri))

    @property
    def uri(self) -> str:
        return str(self.place)

    @property
    def sink(self) -> SinkFactory:
        """Output files are staged or written as Parquet, committed whole by `ParquetSink`."""
        from bertetl.io.write import ParquetSink

        return ParquetSink

    def lock(self) -> Any:
        return commits.destination_lock(self.place)

    def holding(self) -> contextlib.AbstractContextManager[None]:
        return commits.holding(self.place)

    def staging(self) -> contextlib.AbstractContextManager[Path]:
        return commits.staging_for(self.place)

    def node_staging(self) -> contextlib.AbstractContextManager[Any]:
        from bertetl.errors import ExecutorError

        raise ExecutorError(
            f"{self.uri}: a {self.kind} DEST is staged on the driver's machine, which the "
            "cluster's other nodes cannot reach; run on a single-node Ray (or the local "
            "executor), or write to an object-store DEST"
        )

    def clean_leftovers(self, only_file: str | None = None) -> int:
        return commits.clean_leftovers(self.place, only_file)

    def committed_manifests(self, column: str | None = None) -> dict[str, tuple[Any, Manifest]]:
        return manifests.committed_manifests(self.place, column)

    def verify(self, where: Any, manifest: Manifest) -> list[OutputDamage]:
        return manifests.verify_outputs(where, manifest)

    def overlaps(self, source: object) -> bool:
        from bertetl.io.destinations.overlap import overlaps

        return overlaps(getattr(source, "place", source), self.place)

    def _cannot(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"{self.uri}: a {self.kind} DEST cannot {what}")

    def existing_outputs(self) -> list[Any]:
        raise self._cannot("list output files")

    def read_record(self, name: str) -> str | None:
        raise self._cannot("hold a record file")

    def write_record(self, name: str, text: str) -> None:
        raise self._cannot("hold a record file")

    def remove_outputs(self, targets: list[Any]) -> int:
        raise self._cannot("remove output files")

    def merge_keyed(
        self,
        upserts: list[Path],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
        partition: Partition | None = None,
    ) -> bool:
        raise self._cannot("merge rows by key")

    def keyed_rows(self, key: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
        raise self._cannot("merge rows by key")

    def last_record(self) -> str | None:
        raise self._cannot("merge rows by key")
