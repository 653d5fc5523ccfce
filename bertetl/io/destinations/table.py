"""A table as DEST (Delta Lake, Iceberg; `bertetl.io.tables` holds the formats): each
partition, or a whole run, is ONE table transaction carrying the manifest in its metadata.
The staged outputs are local files read back into that transaction, so the table holds no
file of bertetl's own: a partition is checked against the commit that wrote it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from bertetl.io import commit as commits
from bertetl.io.destinations.base import Capabilities, Destination, PlacedDestination
from bertetl.io.manifest import Manifest
from bertetl.io.partitions import Partition
from bertetl.io.stores.locations import TableRef

log = logging.getLogger(__name__)


class TableDestination(PlacedDestination):
    """A table (`place`: a `TableRef`); a format's destination sets `format`."""

    kind: ClassVar[str]
    format: ClassVar[str]
    capabilities = Capabilities(
        commit="transaction",
        files=False,
        object_storage=False,
        every_node=False,
        merge_by_key=True,
    )

    place: TableRef
    #: Whether `refuse_foreign` passed already (every partition of a run asks it).
    _foreign_checked = False

    @classmethod
    def accepts(cls, place: object) -> bool:
        return isinstance(place, TableRef) and place.format == cls.format

    @property
    def uri(self) -> str:
        return self.place.uri

    def clean_leftovers(self, only_file: str | None = None) -> int:
        return commits.clean_leftovers(self.place)  # this machine's staging of the table

    def check(self) -> None:
        """The table's package and catalog load (`check_table`)."""
        from bertetl.io.tables import check_table

        check_table(self.place)

    def root_for(self, source: object) -> tuple[Destination, str | None]:
        return self, None

    def output_target(self, file: Any, source: object) -> Any:
        raise NotImplementedError(f"{self.uri}: a table is written by a staged run")

    def check_outputs_replaceable(self, targets: list[Any]) -> None:
        """A table's commit replaces only its own rows: nothing to refuse by path."""

    def partition_target(self, partition: Partition) -> Any:
        return self.place  # one table transaction at commit; nothing on disk to check

    def check_foreign(self, partitions: list[Partition]) -> dict[str, frozenset[str]]:
        """Refuse a table bertetl did not write (`refuse_foreign`); a commit of bertetl's
        replaces only the rows of its partition, so nothing else is refused."""
        self.refuse_foreign()
        return {partition.value: frozenset() for partition in partitions}

    def refuse_foreign(self) -> None:
        """Refuse (`InputError`, one line naming it) a table that holds rows and no commit of
        bertetl's: a run would replace a user's table (its rows kept only in its history)."""
        from bertetl.errors import InputError
        from bertetl.io.tables import is_foreign

        if self._foreign_checked:  # once a run: it reads the table's whole history
            return
        if not is_foreign(self.place):
            self._foreign_checked = True
            return
        if self.overwrite_foreign:
            log.warning("%s is a table bertetl did not write; replaced, as asked", self.uri)
            self._foreign_checked = True
            return
        raise InputError(
            f"DEST {self.uri} is a table bertetl did not write (it holds rows and no bertetl "
            "commit); a run would replace it: pick a new table for DEST, or pass "
            "--overwrite-foreign to replace it knowingly"
        )

    def commit_partition(
        self,
        target: Any,
        staged: Path,
        manifest: Manifest,
        owned: frozenset[str],
        files: list[Path],
    ) -> Manifest:
        """Commit the staged partition as ONE table transaction that replaces exactly this
        partition, the manifest in the commit's metadata (`bertetl.io.tables.commit_partition`).
        The staged files are not the table's files, so the manifest lists no outputs: a
        table's partition is checked against the commit that wrote it (`verify_outputs`)."""
        from bertetl.io.tables import commit_partition

        manifest.outputs, manifest.output_files = [], []
        commit_partition(
            self.place,
            manifest.partition_column,
            manifest.partition,
            files,
            manifest.model_dump_json(),
        )
        return manifest

    def check_replace_all(self) -> None:
        """Refuse (one line) a partitioned table for a run committed whole (`replace_all`):
        `bertetl backfill` commits it one partition at a time."""
        from bertetl.errors import InputError
        from bertetl.io.tables import partition_columns

        if columns := partition_columns(self.place):
            raise InputError(
                f"{self.uri} is partitioned by {', '.join(columns)}: bertetl enrich replaces a "
                f"whole table; use bertetl backfill --partition-column {columns[0]}, which "
                "commits it one partition at a time"
            )
        self.refuse_foreign()

    def replace_all(self, staged: Path, files: list[Path], rows: int, record: str) -> None:
        """Replace every row of the table with the staged `files` (`rows` rows) in ONE
        transaction carrying the run's `record` (`bertetl.io.tables.replace_table`)."""
        from bertetl.io.tables import replace_table

        replace_table(self.place, staged, files, rows, record)

    def merge_keyed(
        self,
        upserts: list[Path],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
        partition: Partition | None = None,
    ) -> bool:
        """ONE transaction: the staged rows upserted by `key`, the keys in `deletes` removed,
        `record` in the commit's metadata (`bertetl.io.tables.merge_rows`); False, and no
        commit, when there is nothing to upsert or delete."""
        from bertetl.io.tables import merge_rows

        if not upserts and (deletes is None or not deletes.num_rows):
            return False
        merge_rows(self.place, upserts, deletes, key, record)
        return True

    def keyed_rows(self, key: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The committed rows' key columns and `columns` (those the table has), streamed."""
        from bertetl.io.tables import keyed_rows

        return keyed_rows(self.place, list(dict.fromkeys([*key, *columns])))

    def last_record(self) -> str | None:
        from bertetl.io.tables import last_record

        return last_record(self.place)

    def earlier_outputs(
        self,
        target: Any,
        partition: Partition,
        outputs: list[str],
        damaged: bool,
        fields: list[pa.Field],
        scratch: Path,
    ) -> list[Any]:
        """The partition's rows in the table's current snapshot, read into a local file
        (none when they cannot be read, or when the partition was changed since its commit:
        `damaged`)."""
        from bertetl.io.tables import read_committed

        if damaged:
            return []
        path = read_committed(
            self.place, partition.column, partition.value, fields, scratch / "earlier.parquet"
        )
        return [] if path is None else [path]

    def committed_outputs(self) -> tuple[list[Any], list[Any]]:
        raise NotImplementedError(f"{self.uri}: a table's rows are read from the table")

    @property
    def shown_root(self) -> Any:
        return None  # a table has no folders (a property: isinstance checks read it)

    def relative(self, folder: Any) -> str:
        raise NotImplementedError(f"{self.uri}: a table has no folders")

    def file_path(self, relative: str) -> Any:
        return None  # a table has no folder of its own to put a file in
