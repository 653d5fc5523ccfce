"""Row reuse: rows whose text is unchanged take their earlier outputs instead of the model.

When a partition's inputs change but its model and config do not, the earlier committed
outputs are indexed by text: the text and the added columns go to an Arrow IPC file in
scratch space (memory-mapped, so memory stays bounded by the batch, not the partition), and
a sorted array of 64-bit text hashes (polars' hash, within one process) finds candidates.
A candidate is reused only when its text is equal, so a hash collision costs an inference,
never a wrong output.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.engine.tokenize import as_plain_text, without_invalid_utf8
from bertetl.io.read import open_parquet
from bertetl.io.stores.locations import Location

_TEXT = "__bertetl_text"


def text_hashes(text: pa.Array) -> np.ndarray:
    """64-bit hashes of a text array (stable within a process, not across polars versions)."""
    import polars as pl

    series = pl.Series(pc.cast(as_plain_text(text), pa.large_string()))
    return series.hash(seed=0).to_numpy()


@dataclass
class ReuseIndex:
    """Earlier outputs of one partition, looked up by text."""

    table: pa.Table  # `__bertetl_text` + the added columns, memory-mapped
    sorted_hashes: np.ndarray
    order: np.ndarray  # row of `table` for each entry of `sorted_hashes`

    @classmethod
    def build(
        cls,
        outputs: Iterable[Path | Location],
        text_column: str,
        added: list[pa.Field],
        error_column: str,
        scratch: Path,
    ) -> ReuseIndex | None:
        """Index the rows of earlier output files that were enriched without error; None when
        their added columns differ from `added` (then nothing can be reused). An output may
        be a `Location` on an object store (read with ranged reads, text and added columns
        only); `scratch` is a local folder."""
        names = [f.name for f in added]
        schema = pa.schema([pa.field(_TEXT, pa.large_string()), *added])
        hashes: list[np.ndarray] = []
        path = scratch / "reuse.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for output in outputs:
                try:
                    parquet = open_parquet(output)
                except (pa.ArrowException, OSError):
                    continue  # an unreadable earlier output: its rows are simply re-enriched
                old_types = {f.name: f.type for f in parquet.schema_arrow}
                if text_column not in old_types or any(
                    old_types.get(f.name) != f.type for f in added
                ):
                    return None
                for batch in parquet.iter_batches(columns=[text_column, *names]):
                    keep = pc.and_(
                        pc.is_null(batch.column(error_column)),
                        pc.is_valid(batch.column(text_column)),
                    )
                    batch = batch.filter(keep)
                    if not batch.num_rows:
                        continue
                    text = pc.cast(as_plain_text(batch.column(text_column)), pa.large_string())
                    columns = [text, *(batch.column(name) for name in names)]
                    writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
                    hashes.append(text_hashes(text))
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        all_hashes = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        order = np.argsort(all_hashes, kind="stable")
        return cls(table, all_hashes[order], order)

    def __len__(self) -> int:
        return self.table.num_rows

    def lookup(self, text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """For each row: whether an earlier output exists (equal text), and its index."""
        # bytes that are not UTF-8 are kept from polars' hash, whose strings must be UTF-8
        # (such rows have no outputs to reuse: the index holds only rows without an error)
        text, _ = without_invalid_utf8(pc.cast(as_plain_text(text), pa.large_string()))
        found = np.zeros(len(text), dtype=bool)
        rows = np.zeros(len(text), dtype=np.int64)
        if not len(self.sorted_hashes) or not len(text):
            return found, rows
        hashes = text_hashes(text)
        slots = np.searchsorted(self.sorted_hashes, hashes).clip(max=len(self.sorted_hashes) - 1)
        candidate = (self.sorted_hashes[slots] == hashes) & ~np.asarray(
            pc.is_null(text).to_numpy(zero_copy_only=False)
        )
        where = np.flatnonzero(candidate)
        if len(where):
            old_rows = self.order[slots[where]]
            old_text = self.table.column(_TEXT).take(pa.array(old_rows))
            same = pc.equal(old_text, text.take(pa.array(where))).to_numpy(zero_copy_only=False)
            found[where[same]] = True
            rows[where[same]] = old_rows[same]
        return found, rows

    def outputs(self, rows: np.ndarray) -> pa.Table:
        """The added columns of the given earlier rows."""
        return self.table.drop_columns([_TEXT]).take(pa.array(rows, type=pa.int64()))


@dataclass
class _Pending:
    batch: pa.RecordBatch
    found: np.ndarray
    rows: np.ndarray

    @property
    def needs_model(self) -> bool:
        return not bool(self.found.all())


def transform_with_reuse(
    transform,
    batches: Iterable[pa.RecordBatch],
    index: ReuseIndex,
    text_column: str,
    schema: pa.Schema,
    counts: dict[str, int],
) -> Iterator[pa.RecordBatch]:
    """Like `transform(batches)`, but rows found in `index` skip it and take their earlier
    outputs. `transform` must yield one batch per batch it is given, in order (the engine's
    stages do). `counts["reused"]` is increased by the rows reused."""
    pending: deque[_Pending] = deque()

    def rows_needing_the_model() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            found, rows = index.lookup(batch.column(text_column))
            item = _Pending(batch, found, rows)
            pending.append(item)  # before yielding: the consumer pops in the same order
            if item.needs_model:
                yield batch.filter(pa.array(~found))

    def merge(item: _Pending, enriched: pa.RecordBatch | None) -> pa.RecordBatch:
        reused_positions = np.flatnonzero(item.found)
        counts["reused"] = counts.get("reused", 0) + len(reused_positions)
        if not len(reused_positions):
            assert enriched is not None
            return enriched
        originals = item.batch.filter(pa.array(item.found))
        earlier = index.outputs(item.rows[reused_positions])
        reused = pa.RecordBatch.from_arrays(
            [*originals.columns, *(c.combine_chunks() for c in earlier.columns)], schema=schema
        )
        if enriched is None:
            return reused
        positions = np.concatenate([np.flatnonzero(~item.found), reused_positions])
        table = pa.Table.from_batches([enriched.cast(schema), reused], schema=schema)
        merged = table.take(pa.array(np.argsort(positions, kind="stable"))).combine_chunks()
        return merged.to_batches()[0]

    for enriched in transform(rows_needing_the_model()):
        while pending and not pending[0].needs_model:
            yield merge(pending.popleft(), None)
        if not pending:
            raise RuntimeError("the engine returned more batches than it was given")
        yield merge(pending.popleft(), enriched)
    while pending:
        yield merge(pending.popleft(), None)
