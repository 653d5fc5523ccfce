"""Staging every node of a cluster reaches: a hidden prefix on an object-store DEST, and whole
small files (a Ray run's parts and error records) written to and read from a folder that is
either local or on a store.

Workers on nodes that share no disk with the driver write their parts and outputs under
`DEST/.bertetl-staging/<run>/` (`node_staged_prefix`); the driver commits from there (a
server-side copy to each output's place, the manifest last) and deletes the prefix when the
run ends. A run killed before that leaves its prefix; the next run, holding DEST's lock,
deletes every run's prefix (`clean_node_staging`): no run but the lock holder stages there.
Readers skip the prefix (its name starts with `.`). An object written here is put whole (one
request, or a multipart upload the store shows only once complete), so nothing is read
half-written.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from bertetl.errors import CommitError
from bertetl.io.stores.locations import Location

#: The hidden prefix under an object-store DEST where runs on a cluster stage.
NODE_STAGING = ".bertetl-staging"

#: A folder a run stages in: a local path, or a prefix on a store.
Folder = Path | Location


def node_staging_root(dest: Location) -> Location:
    """Where runs bound for `dest` stage on the store itself."""
    return dest / NODE_STAGING


@contextlib.contextmanager
def node_staged_prefix(dest: Location) -> Iterator[Location]:
    """A fresh prefix for one run (or partition) under `dest`'s node staging; every object
    under it is deleted on exit."""
    prefix = node_staging_root(dest) / uuid.uuid4().hex
    try:
        yield prefix
    finally:
        delete_prefix(prefix)


def clean_node_staging(dest: Location) -> int:
    """Delete what killed runs staged under `dest` (call holding DEST's lock); how many
    objects were removed."""
    return delete_prefix(node_staging_root(dest))


def delete_prefix(prefix: Location) -> int:
    """Delete every object under `prefix`; how many there were."""
    from bertetl.io.stores.objects import delete_objects

    return delete_objects(prefix / name for name, _ in listing(prefix))


def listing(folder: Folder) -> list[tuple[str, int]]:
    """The files under `folder` (relative names) with their modification times (ns); empty
    when it does not exist."""
    import pyarrow.fs as pafs

    where = _located(folder)
    try:
        found = where.fs.get_file_info(
            pafs.FileSelector(where.path, recursive=True, allow_not_found=True)
        )
    except (OSError, pa.ArrowException) as e:
        raise CommitError(f"cannot list {where.uri}: {e}") from e
    start = len(where.path.rstrip("/")) + 1
    return sorted(
        (info.path[start:], int(info.mtime_ns or 0))
        for info in found
        if info.type == pafs.FileType.File
    )


def write_whole(target: Folder, data: bytes) -> None:
    """Write a file whole: locally a temp file renamed into place, on a store one object."""
    if isinstance(target, Location) and not target.local:
        from bertetl.io.stores.objects import put_bytes

        put_bytes(target, data)
        return
    path = Path(os.fspath(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def write_ipc(table: pa.Table, target: Folder) -> None:
    """Write `table` as an Arrow IPC file at `target`, whole (a local file is streamed to a
    temp name, then renamed; an object is put in one piece)."""
    if isinstance(target, Location) and not target.local:
        buffer = pa.BufferOutputStream()
        with pa.ipc.new_file(buffer, table.schema) as writer:
            writer.write_table(table)
        write_whole(target, buffer.getvalue().to_pybytes())
        return
    path = Path(os.fspath(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with pa.OSFile(str(temp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(temp, path)


def read_ipc(source: Folder) -> pa.Table:
    """An Arrow IPC file written by `write_ipc` (memory-mapped when local)."""
    if isinstance(source, Location) and not source.local:
        with source.fs.open_input_file(source.path) as handle:
            return pa.ipc.open_file(handle).read_all()
    path = os.fspath(source)
    with pa.memory_map(path) as handle:
        return pa.ipc.open_file(handle).read_all()


def read_text(source: Folder) -> str:
    """A small file's text."""
    if isinstance(source, Location) and not source.local:
        with source.fs.open_input_stream(source.path) as handle:
            return handle.read().decode()
    return Path(os.fspath(source)).read_text()


def as_folder(folder: str | os.PathLike[str] | Location) -> Folder:
    """A folder as the functions here take it (a string is a local path)."""
    return folder if isinstance(folder, Location) else Path(folder)


def _located(folder: Folder) -> Location:
    if isinstance(folder, Location):
        return folder
    return Location(str(folder), str(folder))
