"""Ray Data read stage: the engine's own Parquet reader (`read.stream`) as a Ray Datasource.

Each read task streams one input file (or a range of a big file's row groups) in windows of
`window_rows`, as the local engine does, and tags every row with two internal columns: the
file's index in the run and the row's position in that file. The sink uses them to write
each input file's rows back into one output file, in order, and to prove that every row
came back exactly once.

Why not `ray.data.read_parquet`: its `include_paths` column is named `path` and overwrites a
user column of that name; it reads every file against one unified schema (a file lacking a
column gets nulls), where bertetl keeps each file's own schema; it has no row position, so a
lost or re-run block could not be detected exactly; and one read task may cover several
files, so one corrupt file would fail good files with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from bertetl.errors import InputError, is_transient
from bertetl.io.read import SourceFile, stream
from bertetl.io.stores.node_staging import Folder, as_folder, listing, read_text, write_whole
from bertetl.schema import INTERNAL_PREFIX

#: Internal columns carried from the read stage to the sink (never written out).
FILE_COLUMN = INTERNAL_PREFIX + "file"
ROW_COLUMN = INTERNAL_PREFIX + "row"


@dataclass(frozen=True)
class ReadRange:
    """Rows `first` .. `first + rows - 1` of input file number `index`: its row groups
    `row_groups` (None: the whole file)."""

    index: int
    file: SourceFile
    first: int
    rows: int
    row_groups: tuple[int, ...] | None = None


def record_error(
    errors_dir: str | Folder, index: int, message: str, retryable: bool = False
) -> None:
    """Leave a file's failure where the driver reads it after the run (a shared folder, or a
    prefix on the store every node reaches); `retryable`: an I/O error that may pass on a
    retry."""
    kind = "retryable" if retryable else "permanent"
    write_whole(as_folder(errors_dir) / f"{index}.{kind}.{uuid.uuid4().hex}.txt", message.encode())


def read_errors(errors_dir: str | Folder) -> dict[int, tuple[str, bool]]:
    """The first recorded failure of each file, by file index: (message, retryable)."""
    found: dict[int, tuple[str, bool]] = {}
    errors_dir = as_folder(errors_dir)
    for name, _ in sorted(listing(errors_dir), key=lambda item: (item[1], item[0])):
        if name.endswith(".txt") and "/" not in name:
            index, kind, _ = name.split(".", 2)
            if int(index) not in found:
                found[int(index)] = (read_text(errors_dir / name), kind == "retryable")
    return found


def read_range(part: ReadRange, window_rows: int, errors_dir: str | Folder) -> Iterator[pa.Table]:
    """Stream one range as tables of at most `window_rows` rows, tagged with file and row.

    A read failure is recorded for the driver and ends this range: the rows already sent
    are written to a hidden part, and the file is then reported failed, not committed.
    """
    position = part.first
    row_groups = list(part.row_groups) if part.row_groups is not None else None
    try:
        for batch in stream(part.file, window_rows, row_groups):
            rows = np.arange(position, position + batch.num_rows, dtype=np.int64)
            position += batch.num_rows
            table = pa.Table.from_batches([batch])
            table = table.append_column(
                FILE_COLUMN, pa.array(np.full(batch.num_rows, part.index, dtype=np.int32))
            )
            yield table.append_column(ROW_COLUMN, pa.array(rows))
    except InputError as e:
        record_error(errors_dir, part.index, str(e), is_transient(e))


class ParquetFilesDatasource(Datasource):
    """One read task per range, so a failing file never takes another file's rows with it."""

    def __init__(self, ranges: list[ReadRange], window_rows: int, errors_dir: str | Folder) -> None:
        super().__init__()
        self.ranges = ranges
        self.window_rows = window_rows
        self.errors_dir = errors_dir

    def get_name(self) -> str:
        return "BertetlParquet"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, **_: Any
    ) -> list[ReadTask]:
        window_rows, errors_dir = self.window_rows, self.errors_dir
        return [
            ReadTask(
                lambda part=part: read_range(part, window_rows, errors_dir),
                BlockMetadata(
                    num_rows=part.rows,
                    size_bytes=None,
                    input_files=[part.file.path],
                    exec_stats=None,
                ),
            )
            for part in self.ranges
        ]
