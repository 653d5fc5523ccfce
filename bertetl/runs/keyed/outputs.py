"""The outputs a keyed run assembles its rows from, looked up by text fingerprint: the rows
DEST already holds (enriched without error) and the distinct texts this run inferred.

They go to an Arrow IPC file in scratch space, memory-mapped, so memory stays bounded by a
batch; a sorted array of the fingerprints' first 8 bytes finds a row, and the whole 16 bytes
are compared, so a row takes the outputs of exactly its text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.io.keys import FINGERPRINT_BYTES, FINGERPRINT_TYPE


def _bytes(fingerprints: pa.Array) -> np.ndarray:
    """The fingerprints (none null) as rows of 16 bytes."""
    data = fingerprints.buffers()[1]
    start = fingerprints.offset * FINGERPRINT_BYTES
    raw = np.frombuffer(data, dtype=np.uint8)[start : start + len(fingerprints) * FINGERPRINT_BYTES]
    return raw.reshape(-1, FINGERPRINT_BYTES)


def _prefixes(whole: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each fingerprint, as unsigned integers."""
    return whole[:, :8].copy().view(">u8").ravel()


class OutputIndex:
    """Added columns by text fingerprint (`add` batches, then `seal`, then `take`)."""

    def __init__(self, path: Path, fingerprint: str, added: list[pa.Field]) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.added = added
        self.schema = pa.schema([pa.field(fingerprint, FINGERPRINT_TYPE), *added])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._parts: list[np.ndarray] = []
        self.table: pa.Table | None = None
        self.whole: np.ndarray = np.empty((0, FINGERPRINT_BYTES), dtype=np.uint8)
        self.sorted: np.ndarray = np.empty(0, dtype=">u8")
        self.order: np.ndarray = np.empty(0, dtype=np.int64)

    def add(self, batches: Iterable[pa.RecordBatch]) -> None:
        """Index the rows of `batches` (they hold the fingerprint and the added columns; rows
        with a null fingerprint are left out)."""
        for batch in batches:
            batch = batch.filter(pc.is_valid(batch.column(self.fingerprint)))
            if not batch.num_rows:
                continue
            columns = [
                batch.column(f.name).cast(f.type) if f.name in batch.schema.names else None
                for f in self.schema
            ]
            arrays = [
                column if column is not None else pa.nulls(batch.num_rows, field.type)
                for column, field in zip(columns, self.schema, strict=True)
            ]
            self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
            self._parts.append(_bytes(arrays[0]).copy())

    def seal(self) -> OutputIndex:
        """Close the file and sort the fingerprints; the index can then be read."""
        self._writer.close()
        self._sink.close()
        self.table = pa.ipc.open_file(pa.memory_map(str(self.path))).read_all()
        if self._parts:
            self.whole = np.concatenate(self._parts)
        self._parts = []
        prefixes = _prefixes(self.whole)
        self.order = np.argsort(prefixes, kind="stable")
        self.sorted = prefixes[self.order]
        return self

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    def find(self, fingerprints: pa.Array) -> np.ndarray:
        """The index row of each fingerprint's outputs; -1 where there is none (a null one)."""
        assert self.table is not None, "seal() the index first"
        rows = np.full(len(fingerprints), -1, dtype=np.int64)
        valid = np.asarray(pc.is_valid(fingerprints).to_numpy(zero_copy_only=False))
        if not len(self.sorted) or not valid.any():
            return rows
        where = np.flatnonzero(valid)
        wanted = _bytes(fingerprints.filter(pa.array(valid)))
        prefixes = _prefixes(wanted)
        left = np.searchsorted(self.sorted, prefixes, side="left")
        right = np.searchsorted(self.sorted, prefixes, side="right")
        first = self.order[left.clip(max=len(self.order) - 1)]
        same = (left < right) & (self.whole[first] == wanted).all(axis=1)
        rows[where[same]] = first[same]
        # two texts whose fingerprints share their first 8 bytes: the rest compared one by one
        for i in np.flatnonzero(~same & (right - left > 1)):
            for slot in range(left[i] + 1, right[i]):
                if (self.whole[self.order[slot]] == wanted[i]).all():
                    rows[where[i]] = self.order[slot]
                    break
        return rows

    def take(self, rows: np.ndarray) -> pa.Table:
        """The added columns of index rows `rows` (all found)."""
        assert self.table is not None
        return self.table.select([f.name for f in self.added]).take(pa.array(rows))
