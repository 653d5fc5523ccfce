"""Atomic Parquet output: write to a hidden temp file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.errors import CommitError
from bertetl.io.scratch import run_scratch
from bertetl.io.stores.locations import Location, is_remote

TEMP_SUFFIX = ".bertetl-tmp"

log = logging.getLogger(__name__)


def vector_encodings(schema: pa.Schema) -> dict[str, list[str]]:
    """Writer options for float vector columns (embeddings, scores): BYTE_STREAM_SPLIT and
    no dictionary, which pyarrow would otherwise try on every float, give up on and still
    write (measured on 384-float embeddings under zstd: 12.6% smaller, written 23% faster;
    BENCHMARKS.md). Every other column keeps pyarrow's default dictionary encoding."""
    vectors = {
        f"{field.name}.list.element"
        for field in schema
        if (pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type))
        and pa.types.is_floating(field.type.value_type)
    }
    if not vectors:
        return {}
    buffer = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buffer)  # the Parquet leaf paths of this schema
    leaves = pq.read_metadata(pa.BufferReader(buffer.getvalue())).schema
    paths = [leaves.column(i).path for i in range(len(leaves))]
    return {
        "use_dictionary": [path for path in paths if path not in vectors],
        "use_byte_stream_split": [path for path in paths if path in vectors],
    }


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ParquetSink:
    """One output file with an explicit schema: `open()` → `write()`… → `commit()` / `abort()`.

    Data goes to `.<name>.<random>.bertetl-tmp` in the target's folder (hidden from Arrow,
    Spark and polars readers, which skip names starting with `.`); `commit()` fsyncs it and
    renames it over the target, so readers see the old file or the whole new one, never a part.
    Used as a context manager it commits on success and aborts on an exception.

    With an object-store `Location` as its path, the file is written to a local temp file
    (in a scratch folder of the system's temp folder, which the next run removes if this one
    is killed: `bertetl.io.scratch`) and `commit()` uploads it whole
    (`bertetl.io.stores.objects.upload_file`): the object is the old one or the whole new one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Location,
        schema: pa.Schema,
        compression: str = "zstd",
    ):
        self.remote: Location | None = path if is_remote(path) else None  # type: ignore[assignment]
        self.path = Path(path) if self.remote is None else Path(self.remote.name)
        self.schema = schema
        self.compression = compression
        self.temp_path = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._scratch = contextlib.ExitStack()  # the scratch folder of a remote target's file

    def open(self) -> ParquetSink:
        try:
            if self.remote is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            else:
                folder = self._scratch.enter_context(run_scratch("upload-"))
                self.temp_path = folder / self.temp_path.name
            self._writer = pq.ParquetWriter(
                self.temp_path,
                self.schema,
                compression=self.compression,
                **vector_encodings(self.schema),
            )
        except OSError as e:
            raise CommitError(f"cannot create output {self.temp_path}: {e}") from e
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            raise CommitError(f"output {self.path} is not open")
        if batch.schema != self.schema:
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)
        try:
            self._writer.write_batch(batch)
        except OSError as e:
            raise CommitError(f"cannot write output {self.temp_path}: {e}") from e
        self.rows += batch.num_rows

    def commit(self) -> None:
        """Close, fsync and atomically rename the temp file onto the target."""
        if self._writer is None:
            raise CommitError(f"output {self.path} is not open")
        if self.remote is not None:
            self._upload(self.remote)
            return
        try:
            self._writer.close()
            self._writer = None
            with open(self.temp_path, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(self.temp_path, self.path)
        except OSError as e:
            self.abort()
            raise CommitError(f"cannot commit output {self.path}: {e}") from e
        try:
            fsync_dir(self.path.parent)
        except OSError as e:  # the file is complete and in place; only durability is in doubt
            log.warning("committed %s but could not fsync its folder: %s", self.path, e)

    def _upload(self, target: Location) -> None:
        from bertetl.io.stores.objects import check_held, upload_file

        assert self._writer is not None
        try:
            self._writer.close()
            self._writer = None
            check_held(target)  # a run that lost DEST's lock writes nothing more
            upload_file(self.temp_path, target)
        except OSError as e:
            raise CommitError(f"cannot commit output {target.uri}: {e}") from e
        finally:
            self.abort()  # the local temp file, uploaded or not

    def abort(self) -> None:
        """Drop everything written; the target (and any earlier version of it) is untouched."""
        if self._writer is not None:
            try:
                self._writer.close()
            except (OSError, pa.ArrowException):
                pass  # the temp file is removed below either way
            self._writer = None
        self.temp_path.unlink(missing_ok=True)
        self._scratch.close()

    def __enter__(self) -> ParquetSink:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_file(
    target: str | os.PathLike[str] | Location, produce: Callable[[Path], Path | None]
) -> Any:
    """A file a run writes beside its outputs (a plot): `produce(path)` writes it at a local
    path and returns it (None: nothing to write). A local `target` is written in place; an
    object-store one is produced in a temporary folder and uploaded whole. Returns the
    target, or None when nothing was written."""
    if not is_remote(target):
        return produce(Path(target))
    from bertetl.io.stores.objects import upload_file

    assert isinstance(target, Location)
    with tempfile.TemporaryDirectory(prefix="bertetl-file-") as folder:
        made = produce(Path(folder) / target.name)
        if made is None:
            return None
        upload_file(made, target)
    return target
