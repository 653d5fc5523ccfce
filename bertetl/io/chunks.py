"""Cut a source into chunks (whole files, or row-group ranges of big files) for the enrich flow.

A big file's chunks are enriched into hidden part files and then assembled, in order, into
the same single output file `bertetl enrich` writes, so the output layout does not depend on
how the work was cut, and a retried chunk replaces its own part only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.errors import CommitError, InputError
from bertetl.io.paths import dest_path
from bertetl.io.read import SourceFile, read_metadata
from bertetl.io.sink import SinkFactory
from bertetl.io.stores.locations import Location
from bertetl.io.write import ParquetSink


@dataclass(frozen=True)
class Chunk:
    """Row groups `row_groups` of `file` (None: the whole file), part `part` of `parts`."""

    file: SourceFile
    target: Path | Location
    schema: pa.Schema
    rows: int
    row_groups: tuple[int, ...] | None = None
    part: int = 0
    parts: int = 1

    @property
    def name(self) -> str:
        if self.parts == 1:
            return self.file.relative
        return f"{self.file.relative} [part {self.part + 1}/{self.parts}]"

    def part_path(self, staging: Path) -> Path:
        """Where a part of a split file is written before assembly."""
        return staging / f"{self.file.relative}.part-{self.part:05d}.parquet"


def cut_row_groups(metadata: pq.FileMetaData, chunk_rows: int) -> list[tuple[tuple[int, ...], int]]:
    """Consecutive row-group ranges of about `chunk_rows` rows each (at least one group)."""
    ranges: list[tuple[tuple[int, ...], int]] = []
    groups: list[int] = []
    rows = 0
    for index in range(metadata.num_row_groups):
        group_rows = metadata.row_group(index).num_rows
        if groups and rows + group_rows > chunk_rows:
            ranges.append((tuple(groups), rows))
            groups, rows = [], 0
        groups.append(index)
        rows += group_rows
    if groups or not ranges:
        ranges.append((tuple(groups), rows))
    return ranges


def plan_chunks(
    files: list[SourceFile],
    source: str | os.PathLike[str] | Location,
    dest: str | os.PathLike[str] | Location,
    check_file: Callable[[SourceFile], pa.Schema],
    chunk_rows: int,
) -> tuple[list[Chunk], dict[str, str]]:
    """Chunks of SOURCE's `files` (as `check_run_paths` returned them) of at most about
    `chunk_rows` rows (whole row groups), and the files that failed `check_file` (which
    returns a file's schema or raises `InputError`), by path."""
    if not isinstance(source, Location):
        source = os.fspath(source)
    if not isinstance(dest, Location):
        dest = os.fspath(dest)
    chunks: list[Chunk] = []
    failures: dict[str, str] = {}
    for file in files:
        try:
            schema = check_file(file)
            metadata = read_metadata(file)
        except (InputError, OSError, pa.ArrowException) as e:
            failures[file.path] = str(e)
            continue
        target = dest_path(file, source, dest)
        ranges = cut_row_groups(metadata, chunk_rows)
        if len(ranges) == 1:
            chunks.append(Chunk(file, target, schema, metadata.num_rows))
            continue
        for part, (groups, rows) in enumerate(ranges):
            chunks.append(Chunk(file, target, schema, rows, groups, part, len(ranges)))
    return chunks, failures


def assemble(
    parts: list[Path],
    target: Path | Location,
    schema: pa.Schema,
    sink_factory: SinkFactory = ParquetSink,
) -> int:
    """Concatenate part files, in order, into `target` atomically, through the sink
    `sink_factory` makes (the destination's); returns the rows written.

    The parts are removed once the target is committed.
    """
    sink = sink_factory(target, schema)
    sink.open()
    try:
        for part in parts:
            with pq.ParquetFile(part) as parquet:
                for batch in parquet.iter_batches():
                    sink.write(batch)
        sink.commit()
    except (OSError, pa.ArrowException) as e:
        sink.abort()
        raise CommitError(f"cannot assemble {target} from its parts: {e}") from e
    except BaseException:
        sink.abort()
        raise
    for part in parts:
        part.unlink(missing_ok=True)
    return sink.rows
