"""A Lance dataset as DEST (`lance:///PATH`, `lance://s3://BUCKET/PATH`): each run, or each
partition of a partitioned run, is ONE Lance version carrying the manifest in its transaction
properties (`bertetl.io.tables.lance`); with `--key`, one `merge_insert` version upserts and
deletes; with `--index`, a vector index is built and kept up to date after each commit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from bertetl.errors import CommitError
from bertetl.io.destinations.base import Capabilities
from bertetl.io.destinations.table import TableDestination
from bertetl.io.manifest import Manifest
from bertetl.io.partitions import Partition

log = logging.getLogger(__name__)

#: `--index` kinds -> Lance's index type.
INDEX_TYPES = {"ivf_pq": "IVF_PQ", "ivf_hnsw_sq": "IVF_HNSW_SQ"}


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
        indexes=tuple(INDEX_TYPES),
    )

    def _format(self) -> Any:
        from bertetl.io.tables.lance import LanceFormat

        return LanceFormat(self.place)

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
        """One `merge_insert` version: matched keys updated, new keys inserted, and the rows
        whose key is in `deletes` removed (`when_not_matched_by_source_delete` with a filter
        naming those keys, so the upsert and the delete are one version); with `partition`,
        the partition column joins the key, so only that partition's rows are touched."""
        from bertetl.io.tables.lance import keys_filter, partition_filter

        table = self._format()
        upserted = _staged_rows(upserts, partition)
        deleted = None if deletes is None else keys_filter(deletes.select(key))
        if not upserted.num_rows and deleted is None:
            return False
        dataset = table.open()
        if dataset is None:
            if not upserted.num_rows:
                return False  # nothing to delete from, nothing to add
            table._write(upserted.to_reader(), record, "create")
            self.refresh_index()
            return True
        on = [*key, partition.column] if partition is not None else list(key)
        if deleted is not None and partition is not None:
            deleted = f"({deleted}) AND {partition_filter(partition.column, partition.value)}"
        builder = dataset.merge_insert(on).when_matched_update_all().when_not_matched_insert_all()
        if deleted is not None:
            builder = builder.when_not_matched_by_source_delete(deleted)
        source = upserted.cast(_merge_schema(upserted.schema, dataset.schema))
        try:
            transaction, _ = builder.execute_uncommitted(source)
        except (OSError, ValueError) as e:
            raise CommitError(f"{self.uri}: cannot merge by {', '.join(key)}: {e}") from e
        table.commit_transaction(dataset, transaction, record)
        self.refresh_index()
        return True

    def keyed_rows(self, key: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
        dataset = self._format().open()
        if dataset is None:
            return
        names = dataset.schema.names
        wanted = [*key, *(c for c in columns if c in names and c not in key)]
        yield from dataset.scanner(columns=wanted).to_batches()

    def last_record(self) -> str | None:
        found = self._format().records("")
        return found[0][1] if found else None

    def refresh_index(self) -> None:
        """Build the vector index asked for (`index`) when the dataset has none on its column,
        or add the rows it does not cover yet (`optimize_indices`); nothing when it covers every
        row (no new version)."""
        spec = self.index
        if spec is None:
            return
        dataset = self._format().open()
        if dataset is None or spec.column not in dataset.schema.names:
            return
        existing = [i for i in dataset.list_indices() if spec.column in i["fields"]]
        if not existing:
            log.info("%s: building a %s index on %s", self.uri, spec.kind, spec.column)
            dataset.create_index(
                spec.column,
                index_type=INDEX_TYPES[spec.kind],
                metric=spec.metric,
                **spec.params,
            )
            return
        stats = dataset.stats.index_stats(existing[0]["name"])
        if stats.get("num_unindexed_rows", 0):
            dataset.optimize.optimize_indices()


def _staged_rows(files: list[Path], partition: Partition | None) -> pa.Table:
    """The staged files' rows (the partition column added when `partition` is given)."""
    import pyarrow.parquet as pq

    from bertetl.io.tables.base import NULL_PARTITION

    tables = [pq.read_table(f) for f in files]
    rows = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    if partition is not None and partition.column not in rows.column_names:
        value = None if partition.value == NULL_PARTITION else partition.value
        rows = rows.append_column(partition.column, pa.array([value] * rows.num_rows, pa.string()))
    return rows


def _merge_schema(source: pa.Schema, target: pa.Schema) -> pa.Schema:
    """The staged rows' schema with each column's type as the dataset has it."""
    return pa.schema([target.field(f.name) if f.name in target.names else f for f in source])
