"""A Lance dataset as DEST (`lance:///PATH`, `lance://s3://BUCKET/PATH`): each run, or each
partition of a partitioned run, is ONE Lance version carrying the manifest in its transaction
properties (the format, `lance`, lives in `bertetl.io.tables`); with `--key`, one
`merge_insert` version upserts and deletes; with `--index`, a vector index is built and kept up
to date after each commit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from bertetl.io.destinations.base import Capabilities, staged_rows
from bertetl.io.destinations.table import TableDestination
from bertetl.io.manifest import Manifest
from bertetl.io.partitions import Partition

log = logging.getLogger(__name__)


class LanceDataset(TableDestination):
    """A Lance dataset, locked by a sidecar folder beside it."""

    kind = "lance"
    format = "lance"
    capabilities = Capabilities(
        commit="transaction",
        files=False,
        object_storage=False,
        every_node=False,
        merge_by_key=True,
        indexes=("ivf_pq", "ivf_hnsw_sq"),
    )

    def _table(self) -> Any:
        from bertetl.io.tables import open_table

        return open_table(self.place)

    def commit_partition(
        self,
        target: Any,
        staged: Path,
        manifest: Manifest,
        owned: frozenset[str],
        files: list[Path],
    ) -> Manifest:
        committed = super().commit_partition(target, staged, manifest, owned, files)
        self.refresh_index()
        return committed

    def replace_all(self, staged: Path, files: list[Path], rows: int, record: str) -> None:
        super().replace_all(staged, files, rows, record)
        self.refresh_index()

    def merge_keyed(
        self,
        upserts: list[Path],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
        partition: Partition | None = None,
    ) -> bool:
        """One `merge_insert` version (upserts and deletes together), then the index."""
        rows = staged_rows(upserts, partition)
        where = None if partition is None else (partition.column, partition.value)
        merged = bool(self._table().merge_table(rows, deletes, key, record, where))
        if merged:
            self.refresh_index()
        return merged

    def keyed_rows(self, key: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
        yield from self._table().keyed_batches([*key, *columns])

    def last_record(self) -> str | None:
        return self._table().last_record()

    def refresh_index(self) -> None:
        """Build the vector index asked for (`index`), or bring it up to date."""
        if self.index is not None:
            spec = self.index
            log.info("%s: %s index on %s up to date", self.uri, spec.kind, spec.column)
            self._table().refresh_index(spec.kind, spec.column, spec.metric, spec.params)
