"""Ray Data write stage: a Datasink that writes one output file per input file, atomically.

Write tasks see blocks, not files: a block holds a window of one file (or slices of two),
and one file's windows reach different write tasks, in any order. So `write()` splits each
block by input file into runs of consecutive row positions and writes each run to a hidden
Arrow IPC part under the run's scratch (a folder every node shares, or on a cluster whose
nodes share no disk a prefix of the store's node staging), named by file, first row and write
task (deterministic: a retried write task overwrites its own parts). `on_write_complete()` then
commits each file: its parts, sorted by first row, must cover rows 0..n-1 (a part that
repeats rows, from a re-executed block, is trimmed; a gap fails the file), and are streamed
into the target through the destination's sink by `write_output` (for Parquet: temp file,
fsync, rename). Files are
committed by Ray tasks, near the data on a cluster. A file with a gap or a recorded error is
reported failed and not committed; every other file is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data.block import Block
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from bertetl.errors import CommitError, is_transient
from bertetl.executors.ray.datasource import FILE_COLUMN, ROW_COLUMN, read_errors, record_error
from bertetl.io.output import OutputCounts, write_output
from bertetl.io.sink import SinkFactory
from bertetl.io.stores.locations import Location
from bertetl.io.stores.node_staging import Folder, as_folder, read_ipc, write_ipc
from bertetl.io.write import ParquetSink
from bertetl.results import FileResult


@dataclass(frozen=True)
class Part:
    """Rows `first` .. `first + rows - 1` of input file `index`, in an IPC file at `path`."""

    index: int
    first: int
    rows: int
    path: Folder


@dataclass(frozen=True)
class FileTarget:
    """Where input file `index` (of `rows` rows) is committed (a path, or an object-store
    `Location`, uploaded whole by `ParquetSink`), with its output schema."""

    index: int
    source: str
    target: Path | Location
    rows: int
    schema: pa.Schema
    #: Makes the sink the file is written through (the destination's, `Job.sink`).
    sink: SinkFactory = ParquetSink


@dataclass
class CommitOptions:
    """What a commit task needs besides the parts: error and label column names."""

    error_column: str
    label_columns: list[str] = field(default_factory=list)


def runs(positions: np.ndarray) -> list[np.ndarray]:
    """Split row indices into runs of consecutive positions, each sorted (indices into
    `positions`)."""
    order = np.argsort(positions, kind="stable")
    cuts = np.flatnonzero(np.diff(positions[order]) != 1) + 1
    return np.split(order, cuts)


def write_part(table: pa.Table, path: Folder) -> None:
    """Write `table` as an Arrow IPC file at `path`, whole: a local file under a temp name,
    then renamed; an object on the store (node staging) in one piece."""
    write_ipc(table, path)


class PartsDatasink(Datasink[list[Part]]):
    """Writes enriched blocks as parts; commits each input file's parts into its target."""

    def __init__(
        self,
        targets: dict[int, FileTarget],
        parts_dir: str | Folder,
        errors_dir: str | Folder,
        options: CommitOptions,
        counters: Any = None,
    ) -> None:
        self.targets = targets
        self.parts_dir = as_folder(parts_dir)
        self.errors_dir = errors_dir
        self.options = options
        self.counters = counters
        self.results: list[FileResult] = []

    def get_name(self) -> str:
        return "BertetlParts"

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    def write(self, blocks: Iterable[Block], ctx: Any) -> list[Part]:
        written: list[Part] = []
        rows = 0
        for block_number, block in enumerate(blocks):
            if not block.num_rows:
                continue
            files = block.column(FILE_COLUMN).to_numpy()
            positions = block.column(ROW_COLUMN).to_numpy()
            for index in np.unique(files):
                target = self.targets[int(index)]
                in_file = np.flatnonzero(files == index)
                for run_number, run in enumerate(runs(positions[in_file])):
                    take = in_file[run]
                    first = int(positions[take[0]])
                    part = block.take(pa.array(take)).select(target.schema.names)
                    name = f"{first:012d}-{ctx.task_idx}-{block_number}-{run_number}.arrow"
                    path = self.parts_dir / str(int(index)) / name
                    try:
                        write_part(part.cast(target.schema), path)
                    except (OSError, CommitError) as e:
                        message = f"{target.source}: cannot write a part of its output: {e}"
                        record_error(self.errors_dir, target.index, message, is_transient(e))
                        raise
                    written.append(Part(int(index), first, len(take), path))
                    rows += len(take)
        if self.counters is not None:  # counted before this task ends: the driver's last
            ray.get(self.counters.add.remote(rows))  # read, after the dataset, sees it
        return written

    def on_write_complete(self, write_result: WriteResult[list[Part]]) -> None:
        parts: dict[int, list[Part]] = {}
        for returned in write_result.write_returns:
            for part in returned:
                parts.setdefault(part.index, []).append(part)
        self.results = commit_files(self.targets, parts, self.errors_dir, self.options)


def commit_files(
    targets: dict[int, FileTarget],
    parts: dict[int, list[Part]],
    errors_dir: str | Folder,
    options: CommitOptions,
) -> list[FileResult]:
    """Commit every file whose parts are whole, as Ray tasks; results in file order."""
    errors = read_errors(errors_dir)
    pending = {}
    results: dict[int, FileResult] = {}
    for index, target in targets.items():
        if index in errors:
            message, retryable = errors[index]
            results[index] = FileResult(target.source, None, error=message, retryable=retryable)
            continue
        pending[index] = _commit_file.remote(target, parts.get(index, []), options)
    for index, ref in pending.items():
        results[index] = ray.get(ref)
    return [results[index] for index in sorted(results)]


@ray.remote(num_cpus=0.5, max_retries=3)
def _commit_file(target: FileTarget, parts: list[Part], options: CommitOptions) -> FileResult:
    return commit_file(target, parts, options)


def commit_file(target: FileTarget, parts: list[Part], options: CommitOptions) -> FileResult:
    """Stream a file's parts, in row order, into its target atomically.

    Parts must cover rows 0..n-1: rows a part repeats are skipped, a gap fails the file
    (nothing is written).
    """
    started = time.perf_counter()
    result = FileResult(target.source, str(target.target))
    expected = 0
    ordered: list[tuple[Part, int]] = []  # (part, rows to skip at its start)
    for part in sorted(parts, key=lambda p: (p.first, -p.rows)):
        end = part.first + part.rows
        if part.first > expected:
            break
        if end > expected:
            ordered.append((part, expected - part.first))
            expected = end
    if expected != target.rows:
        missing = f"rows {expected}..{target.rows - 1}" if expected < target.rows else "extra rows"
        result.error = (
            f"{target.source}: {missing} of {target.rows} never came back from Ray "
            "(a task failed; see Ray's log); not committed"
        )
        result.dest = None
        return result
    counts = OutputCounts.of(target.schema, options.error_column, options.label_columns)

    def batches() -> Iterable[pa.RecordBatch]:
        for part, skip in ordered:
            yield from read_ipc(part.path).slice(skip).to_batches()

    try:
        write_output(batches(), target.sink(target.target, target.schema), counts, result)
    except (OSError, pa.ArrowException, CommitError) as e:
        result.error, result.dest, result.retryable = str(e), None, is_transient(e)
        return result
    result.seconds = time.perf_counter() - started
    return result
