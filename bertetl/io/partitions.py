"""Hive partitions of a source table (`date=2026-11-01/…`), the unit of backfills."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.errors import InputError
from bertetl.io.commit import strays
from bertetl.io.manifest import MANIFEST_NAME, FileFingerprint, read_manifest
from bertetl.io.read import SourceFile, discover, open_parquet
from bertetl.io.stores.locations import Location, TableRef, is_remote, is_table, storage_error
from bertetl.schema import ENRICH_ERROR

#: What an object-store commit of a partition owns there, written before it deletes anything
#: and removed after its manifest is in (hidden: readers skip names starting with `.`).
COMMIT_INTENT = ".bertetl-commit.json"


@dataclass(frozen=True)
class Partition:
    """One value of the partition column: its folder under the source root and its files."""

    column: str
    value: str
    folder: str
    files: tuple[SourceFile, ...]
    #: A partition of a table SOURCE (`bertetl.io.tables`): the table pinned for the run;
    #: `files` stay empty until the partition is read into a local file (`materialize`).
    table: Any = None
    #: A table partition's input fingerprints (its data files, from the table's metadata)
    #: and rows (None: not known from metadata).
    inputs: tuple[FileFingerprint, ...] | None = None
    rows: int | None = None
    #: Its folder under DEST when DEST already holds the value under another spelling of the
    #: folder name (`day=a%20b` for `day=a b`, after the SOURCE folder was renamed): the
    #: commit replaces that folder, so DEST keeps one folder per value (None: `folder`).
    dest_name: str | None = None

    @property
    def dest_relative(self) -> str:
        """The partition's folder under DEST, relative to it."""
        return self.dest_name or self.folder

    def relative(self, file: SourceFile) -> str:
        """The file's path inside the partition folder."""
        return PurePosixPath(file.relative).relative_to(self.folder).as_posix()


def _partition_folder(file: SourceFile, column: str) -> str:
    parts = PurePosixPath(file.relative).parts[:-1]
    for depth, part in enumerate(parts):
        if part.split("=", 1)[0] == column:
            return PurePosixPath(*parts[: depth + 1]).as_posix()
    raise InputError(
        f"{file.path} is not inside a {column}=VALUE folder; a partitioned source "
        f"keeps each partition's files under SOURCE/{column}=VALUE/"
    )


def list_partitions(
    source: str | os.PathLike[str] | Location | TableRef,
    column: str,
    start: str | None = None,
    end: str | None = None,
    files: list[SourceFile] | None = None,
) -> list[Partition]:
    """The source's partitions of `column` whose value lies in [start, end] (compared as
    strings, so ISO dates sort correctly), sorted by value. `files`: the source's files when
    already discovered.

    A range (`start` or `end` given) that holds none of the source's partitions is an
    `InputError` naming the range and the values that do exist: a run over it would do
    nothing, and saying so beats a silent success.
    """
    if is_table(source):
        assert isinstance(source, TableRef)
        return _table_partitions(source, column, start, end)
    grouped: dict[str, list[SourceFile]] = {}
    folders: dict[str, str] = {}
    for file in discover(source) if files is None else files:
        folder = _partition_folder(file, column)
        value = file.partition[column]
        if folders.setdefault(value, folder) != folder:
            raise InputError(
                f"partition {column}={value} appears in two folders: {folders[value]} and {folder}"
            )
        grouped.setdefault(value, []).append(file)
    found = [
        Partition(column, value, folders[value], tuple(files))
        for value, files in sorted(grouped.items())
        if (start is None or value >= start) and (end is None or value <= end)
    ]
    if not found and (start is not None or end is not None):
        _empty_range(source, column, start, end, sorted(grouped))
    return found


def _empty_range(
    source: object, column: str, start: str | None, end: str | None, values: list[str]
) -> None:
    held = (
        f"its {len(values)} partition(s) run from {column}={values[0]} to {column}={values[-1]}"
        if values
        else "it has no partitions"
    )
    raise InputError(
        f"no partition of {source} has {column} in [{start or '(first)'}, "
        f"{end or '(last)'}]; {held}: pick a range that holds some"
    )


#: Characters a partition value cannot hold in a folder name (`/` would nest a folder, `=` and
#: `%` would be read back as something else, `#` and `?` cut an object-store URL, `*`, `?` and
#: `[` are glob characters): Hive's own list, percent-escaped as Hive does, and read back by
#: `bertetl.io.read`'s `unquote` as the same value.
_UNSAFE = {*"\"#%'*/:=?\\{[]^", *(chr(c) for c in range(32)), chr(127)}


def folder_value(value: str) -> str:
    """A partition value as it appears in a `COLUMN=VALUE` folder name."""
    return "".join(f"%{ord(c):02X}" if c in _UNSAFE else c for c in value)


def _table_partitions(
    source: TableRef, column: str, start: str | None, end: str | None
) -> list[Partition]:
    """The partitions of a table SOURCE pinned at its current version, from its metadata:
    each with its data files' fingerprints (path, size and any deletes; no row is read)."""
    from bertetl.io.tables import pin, source_partitions

    snapshot = pin(source)
    listed = source_partitions(snapshot, column)
    found = [
        Partition(
            column,
            p.value,
            f"{column}={folder_value(p.value)}",
            (),
            table=snapshot,
            inputs=tuple(
                FileFingerprint(relative=f.path, size=f.size, mtime_ns=f.mtime_ns, sha256=f.key)
                for f in p.files
            ),
            rows=p.rows,
        )
        for p in listed
        if (start is None or p.value >= start) and (end is None or p.value <= end)
    ]
    if not found and (start is not None or end is not None):
        _empty_range(source, column, start, end, [p.value for p in listed])
    if not listed:
        raise InputError(f"SOURCE {source} has no data files: nothing to enrich")
    return found


def dest_folder(dest: str | os.PathLike[str] | Location, partition: Partition) -> Any:
    """The partition's folder under DEST, checked to stay inside DEST (a `Location` on an
    object store)."""
    folder = partition.dest_relative
    if is_remote(dest):
        assert isinstance(dest, Location)
        parts = PurePosixPath(folder).parts
        if not parts or any(p in ("..", ".") for p in parts) or folder.startswith("/"):
            raise InputError(f"partition folder {folder!r} would write outside {dest}")
        return dest / folder
    if isinstance(dest, Location):
        dest = dest.path
    root = Path(dest).resolve()
    target = (root / folder).resolve()
    if not target.is_relative_to(root) or target == root:
        raise InputError(f"partition folder {folder!r} would write outside {dest}")
    return target


#: Foreign files named in an error; the rest are counted.
SHOWN_FILES = 5


def remote_files(folder: Location) -> list[str]:
    """The objects under an object-store prefix, relative to it, sorted."""
    import pyarrow.fs as pafs

    try:
        listed = folder.fs.get_file_info(
            pafs.FileSelector(folder.path, recursive=True, allow_not_found=True)
        )
    except (OSError, pa.ArrowException) as e:
        raise storage_error(folder, "cannot list", e) from e
    return sorted(i.path[len(folder.path) + 1 :] for i in listed if i.type == pafs.FileType.File)


def owned_files(folder: Path | Location, partition: Partition) -> set[str]:
    """What bertetl may replace in a partition's DEST folder (paths relative to it): the
    `_manifest.json`, the outputs that manifest lists, and bertetl output (a Parquet file
    with an `enrich_error` column, e.g. from `bertetl enrich`) at the paths this
    partition's files write to. Everything else there is foreign, even a Parquet file with
    an `enrich_error` column under another name (a copy a user put there).

    On an object store a commit is not one step: a run killed inside it, after the old
    manifest was deleted, leaves outputs that no manifest lists (of a source file removed
    meanwhile). So before it deletes anything, a commit there writes what it owns into
    `COMMIT_INTENT` (`bertetl.io.destinations.objectstore`), removed once the new manifest is
    in; what an intent left behind lists is owned too."""
    owned = {MANIFEST_NAME}
    manifest = read_manifest(folder)
    if manifest is not None:
        owned.update(manifest.outputs)
    if is_remote(folder):
        assert isinstance(folder, Location)
        owned.add(COMMIT_INTENT)
        owned.update(read_intent(folder))
    for file in partition.files:
        relative = partition.relative(file)
        if relative not in owned and is_output(folder / relative):
            owned.add(relative)
    return owned


def read_intent(folder: Location) -> list[str]:
    """The paths an interrupted object-store commit of `folder` owned (its `COMMIT_INTENT`);
    none when there is no intent, or it cannot be read (then nothing more is owned)."""
    import json

    try:
        listed = json.loads((folder / COMMIT_INTENT).read_bytes()).get("owned", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in listed if isinstance(name, str)]


def is_output(path: Path | Location) -> bool:
    """Whether the file at `path` is bertetl output: Parquet with an `enrich_error` column
    (any `--prefix`)."""
    try:
        if is_remote(path):
            names = open_parquet(path).schema_arrow.names
        else:
            names = pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        return False
    return any(name.endswith(ENRICH_ERROR) for name in names)


def foreign_files(folder: Path | Location, owned: Collection[str]) -> list[str]:
    """The paths in a partition's DEST `folder` (relative to it) that bertetl did not write
    (not in `owned`, see `owned_files`) and a commit of the partition would replace."""
    if is_remote(folder):
        assert isinstance(folder, Location)
        return [name for name in remote_files(folder) if name not in owned]
    folder = Path(folder)
    if not os.path.lexists(folder):
        return []
    if not folder.is_dir():
        return ["."]  # a file where the partition folder goes
    return strays(folder, owned)


def check_foreign_files(
    dest: str | os.PathLike[str] | Location, partitions: list[Partition]
) -> dict[str, frozenset[str]]:
    """Refuse (`InputError`, one line naming the files) when a partition folder under DEST
    holds files bertetl did not write: a commit replaces the folder whole, and a run deletes
    nothing it did not write. Returns what bertetl owns in each folder, by partition value."""
    owned: dict[str, frozenset[str]] = {}
    found: list[tuple[Any, str]] = []
    if is_table(dest):  # a table's commit replaces only the rows of its partition
        return {partition.value: frozenset() for partition in partitions}
    for partition in partitions:
        folder = dest_folder(dest, partition)
        exists = folder.is_dir() if not is_remote(folder) else bool(remote_files(folder))
        mine = frozenset(owned_files(folder, partition)) if exists else frozenset()
        owned[partition.value] = mine
        found += [(folder, name) for name in foreign_files(folder, mine)]
    if not found:
        return owned
    shown = ", ".join(
        str(folder) if name == "." else f"{folder}/{name}" for folder, name in found[:SHOWN_FILES]
    )
    more = f" and {len(found) - SHOWN_FILES} more" if len(found) > SHOWN_FILES else ""
    raise InputError(
        f"DEST {dest} holds {len(found)} file(s) bertetl did not write in partition folders "
        f"it would replace: {shown}{more}; move them out of DEST (or pick another DEST)"
    )
