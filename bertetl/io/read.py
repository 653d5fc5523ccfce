"""Find source Parquet files and stream them as Arrow record batches."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bertetl.errors import InputError
from bertetl.io.stores.locations import SCHEMES, Location, storage_error
from bertetl.schema import is_text_type

GLOB_CHARS = set("*?[")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFile:
    """One input file: where it is, where it sits under the source root, its hive keys.

    On an object store `path` is the file's URI (`s3://bucket/key`, what messages show) and
    `filesystem` the store's filesystem; locally `filesystem` is None."""

    path: str
    relative: str
    partition: dict[str, str] = field(default_factory=dict)
    filesystem: pafs.FileSystem | None = field(default=None, compare=False, repr=False)

    @property
    def fs_path(self) -> str:
        """The path on `filesystem` (the OS path for a local file)."""
        return self.path if self.filesystem is None else self.path.split("://", 1)[1]

    @property
    def location(self) -> Location:
        """The file as a `Location` (local or on its store)."""
        if self.filesystem is None:
            return Location(self.path, self.path)
        scheme = self.path.split("://", 1)[0].lower()
        return Location(self.path, self.fs_path, self.filesystem, SCHEMES.get(scheme, scheme))


def read_metadata(file: SourceFile) -> pq.FileMetaData:
    """The file's Parquet footer (on its own filesystem); raises what pyarrow raises."""
    return pq.read_metadata(file.fs_path, filesystem=file.filesystem)


def read_columns(file: SourceFile, columns: list[str]) -> pa.Table:
    """`columns` of the whole file (on its own filesystem: ranged reads on an object store);
    a read failure is an `InputError` naming the file. For small tables (training, labels)."""
    try:
        return pq.read_table(file.fs_path, columns=columns, filesystem=file.filesystem)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read Parquet file {file.path}: {e}") from e


def open_parquet(source: str | os.PathLike[str] | Location) -> pq.ParquetFile:
    """A `ParquetFile` (no pre-buffering) for a local path or a `Location` on any store."""
    if isinstance(source, Location) and not source.local:
        return pq.ParquetFile(source.open_input_file(), pre_buffer=False)
    return pq.ParquetFile(os.fspath(source), pre_buffer=False)


def _hidden(part: str) -> bool:
    return part.startswith((".", "_"))


def _hive_keys(relative: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for part in PurePosixPath(relative).parts[:-1]:
        if "=" in part:
            key, value = part.split("=", 1)
            keys[unquote(key)] = unquote(value)
    return keys


def source_root(source: str | os.PathLike[str]) -> Path:
    """The folder that output paths mirror: a directory itself, a file's folder, or a glob's
    fixed prefix, moved up past hive `key=value` folders so partition folders are kept."""
    source = os.fspath(source)
    if os.path.exists(source):
        root = Path(source) if os.path.isdir(source) else Path(source).parent
    elif GLOB_CHARS & set(source):
        parts = Path(source).parts
        cut = next(i for i, p in enumerate(parts) if GLOB_CHARS & set(p))
        root = Path(*parts[:cut]) if cut else Path(".")
    else:
        raise InputError(f"source {source} does not exist")
    while "=" in root.name:
        root = root.parent
    return root


def discover(source: str | os.PathLike[str] | Location) -> list[SourceFile]:
    """List the files of a Parquet file, a directory (recursively) or a glob, sorted.

    Files and folders whose names start with `_` or `.` are skipped, as Arrow and Spark do
    (a file named explicitly is always taken). Hive folders (`date=2026-11-01/`) become the
    file's partition keys, also when SOURCE is a file or folder inside a partition.

    Symlinks to folders are followed (partitions are often linked in), but a folder is
    entered once: a link back to a folder already walked (`ln -s . self`) is a loop and is
    not followed, so discovery always ends. One real file (same device and inode) reached
    under two names, through links or hard links, is read once, under the first name in
    sorted order; the other names are logged.
    """
    if isinstance(source, Location):
        if not source.local:
            return _discover_remote(source)
        source = source.path
    source = os.fspath(source)
    root = source_root(source)
    if os.path.isfile(source):
        paths = [Path(source)]
    elif os.path.isdir(source):
        paths = _Walk(("**",)).files(Path(source))
    else:
        parts = Path(source).parts
        cut = next(i for i, p in enumerate(parts) if GLOB_CHARS & set(p))
        paths = _Walk(parts[cut:]).files(Path(*parts[:cut]) if cut else Path("."))
    files = []
    seen: dict[tuple[int, int], Path] = {}
    for path in sorted(set(paths)):
        relative = path.relative_to(root).as_posix()
        if not os.path.isfile(source) and any(_hidden(p) for p in PurePosixPath(relative).parts):
            continue
        try:
            stat = path.stat()
        except OSError:  # vanished, or a dangling link, since the walk
            continue
        first = seen.setdefault((stat.st_dev, stat.st_ino), path)
        if first != path:
            log.warning("%s is the same file as %s; read once, as %s", path, first, first)
            continue
        if not os.path.isfile(source) and not _is_data_file(path.name, partial(_head, path)):
            log.warning("%s is not a Parquet file (no .parquet name, no PAR1 magic); skipped", path)
            continue
        files.append(SourceFile(str(path), relative, _hive_keys(relative)))
    if not files:
        raise InputError(f"source {source} holds no data files")
    return files


class _Walk:
    """The files under `top` whose path below it matches `pattern` (glob components, `**`
    for any number of folders), hidden names skipped. Links to folders are followed, but
    each folder is entered at most once per place in the pattern (by device and inode), so
    a link loop ends the walk there instead of repeating it forever; and a link to a folder
    that lies in `top` itself (a loop, or two folders linked to each other) is not followed
    at all, so each folder is read where it is, under its own name (and partition)."""

    def __init__(self, pattern: tuple[str, ...]) -> None:
        self.pattern = pattern
        self.found: list[Path] = []
        self.entered: dict[tuple[int, int, int], Path] = {}
        self.top = Path()
        self.real_top = ""

    def files(self, top: Path) -> list[Path]:
        if self.pattern:
            self.top, self.real_top = top, os.path.realpath(top)
            self.visit(top, 0)
        return self.found

    def in_top(self, link: Path) -> Path | None:
        """Where the folder a link leads to is read in `top` itself (named from `top` as
        given), or None when it is not: it lies outside (a partition linked in from
        elsewhere) or in a hidden folder, which the walk skips."""
        real = os.path.realpath(link)
        if real != self.real_top and not real.startswith(self.real_top.rstrip("/") + "/"):
            return None
        relative = os.path.relpath(real, self.real_top)
        if any(_hidden(part) for part in Path(relative).parts):
            return None
        return self.top / relative

    def visit(self, folder: Path, at: int) -> None:
        try:
            stat = folder.stat()
        except OSError:  # vanished since it was listed
            return
        real = self.in_top(folder) if folder != self.top and folder.is_symlink() else None
        if real is not None:
            log.warning(
                "%s is the same folder as %s, a folder of the source read where it is; "
                "the link is not followed",
                folder,
                real,
            )
            return
        first = self.entered.setdefault((stat.st_dev, stat.st_ino, at), folder)
        if first != folder:
            log.warning("%s is the same folder as %s, already read; not read again", folder, first)
            return
        if self.pattern[at] == "**":
            self.visit_any_depth(folder, at)
            return
        last = at + 1 == len(self.pattern)
        for path, is_dir in _entries(folder):
            if not _matches(path.name, self.pattern[at]):
                continue
            if is_dir and not last:
                self.visit(path, at + 1)
            elif not is_dir and last:
                self.found.append(path)

    def visit_any_depth(self, folder: Path, at: int) -> None:
        """`**`: no folder (the rest of the pattern here), or one more folder (`**` again)."""
        entries = _entries(folder)
        if at + 1 < len(self.pattern):
            self.visit(folder, at + 1)
        else:
            self.found.extend(path for path, is_dir in entries if not is_dir)
        for path, is_dir in entries:
            if is_dir:
                self.visit(path, at)


def _entries(folder: Path) -> list[tuple[Path, bool]]:
    """A folder's entries that are not hidden, sorted, each with whether it is a folder
    (links followed; a dangling or looping link is neither file nor folder, and dropped)."""
    try:
        with os.scandir(folder) as scan:
            entries = [(e.name, e.is_dir(), e.is_file()) for e in scan if not _hidden(e.name)]
    except FileNotFoundError:
        return []
    except OSError as e:
        raise InputError(f"cannot list folder {folder}: {e.strerror or e}") from e
    return [
        (folder / name, is_dir) for name, is_dir, is_file in sorted(entries) if is_dir or is_file
    ]


def _matches(name: str, component: str) -> bool:
    """One glob component (`*`, `?`, `[...]`) against one name, case-sensitive as `glob` is."""
    if not GLOB_CHARS & set(component):
        return name == component
    return fnmatch.fnmatchcase(name, component)


def read_schema(file: SourceFile) -> pa.Schema:
    """The file's own (physical) schema, from its footer only; duplicate column names are an
    `InputError` naming them (Arrow allows them, but no column could be addressed)."""
    try:
        schema = pq.read_schema(file.fs_path, filesystem=file.filesystem)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read Parquet file {file.path}: {e}") from e
    duplicates = sorted(name for name, count in Counter(schema.names).items() if count > 1)
    if duplicates:
        raise InputError(
            f"{file.path}: column name(s) {', '.join(map(repr, duplicates))} appear more than "
            "once; rename them so each column has its own name"
        )
    return schema


def require_column(file: SourceFile, schema: pa.Schema, column: str, role: str) -> pa.DataType:
    """The column's type; a missing column fails with the list of the columns that exist."""
    if column not in schema.names:
        raise InputError(
            f"{file.path}: {role} column {column!r} not found; "
            f"columns are: {', '.join(schema.names)}"
        )
    return schema.field(column).type


def check_text_column(file: SourceFile, schema: pa.Schema, text_column: str) -> None:
    """Fail with the column list when the text column is missing, or its type when not text."""
    dtype = require_column(file, schema, text_column, "text")
    if not is_text_type(dtype):
        raise InputError(
            f"{file.path}: text column {text_column!r} has type {dtype}, "
            "expected string, large_string or a dictionary of strings"
        )


def stream(
    file: SourceFile, batch_rows: int, row_groups: list[int] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream one file's record batches (all its row groups, or `row_groups`), every physical
    column, at most `batch_rows` rows each.

    Memory is bounded by the batch size (one row group is decoded at a time), never by the
    file size. Read failures are raised as `InputError` naming the file.

    `pyarrow.parquet.ParquetFile.iter_batches` without `pre_buffer` is used rather than a
    `pyarrow.dataset` scanner: with a slow consumer (the model) the scanner reads row groups
    far ahead (a 1M-row file held 153 MB of Arrow memory after 30 slow batches, a 100k-row file
    20 MB), and pre-buffering caches byte ranges across row groups; `iter_batches` stays flat.
    """
    try:
        with pq.ParquetFile(file.fs_path, pre_buffer=False, filesystem=file.filesystem) as parquet:
            batches = parquet.iter_batches(
                batch_size=batch_rows, row_groups=row_groups, use_threads=True
            )
            for batch in batches:
                if batch.num_rows:
                    yield batch
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read Parquet file {file.path}: {e}") from e


def _glob_matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether path components `parts` match glob components `pattern` (`**`: any number
    of folders)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and _matches(parts[0], pattern[0]) and _glob_matches(parts[1:], pattern[1:])


def remote_source_root(source: Location) -> Location:
    """`source_root` on an object store: the prefix itself, a file's folder, or a glob's
    fixed prefix, moved up past hive `key=value` folders."""
    parts = source.path.split("/")
    if GLOB_CHARS & set(source.path):
        cut = next(i for i, p in enumerate(parts) if GLOB_CHARS & set(p))
        root = Location(source.uri, source.path, source.filesystem, source.store, source.options)
        root = root._with("/".join(parts[:cut]))
    elif source.is_file():
        root = source.parent
    else:
        root = source
    while "=" in root.name and "/" in root.path:
        root = root.parent
    return root


#: Names that say a file is Parquet; any other file in a SOURCE folder is read only when it
#: starts with Parquet's magic bytes (a README or a CSV beside the data is skipped, with a
#: warning), and a file named as Parquet that is not is still read, and fails by name.
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
PARQUET_MAGIC = b"PAR1"


def _is_data_file(name: str, head: Callable[[], bytes]) -> bool:
    """Whether a file found under a SOURCE folder is read: named as Parquet, or starting with
    Parquet's magic (`head()`: its first bytes, read only for other names)."""
    if name.lower().endswith(PARQUET_SUFFIXES):
        return True
    try:
        return head() == PARQUET_MAGIC
    except OSError:
        return True  # unreadable: read it, and let that fail by name


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(len(PARQUET_MAGIC))


def _remote_head(source: Location, path: str) -> bytes:
    with source.fs.open_input_file(path) as handle:
        return handle.read(len(PARQUET_MAGIC))


def _discover_remote(source: Location) -> list[SourceFile]:
    """`discover` on an object store: one listing of the prefix (recursive), hidden names
    skipped; an object named exactly is taken as is. No links exist there to follow."""
    info = source.info()
    root = remote_source_root(source)
    if info.type == pafs.FileType.File:
        paths = [source.path]
        explicit = True
    else:
        explicit = False
        glob = bool(GLOB_CHARS & set(source.path))
        prefix = root.path if glob else source.path
        if not glob and info.type == pafs.FileType.NotFound:
            raise InputError(f"source {source.uri} does not exist")
        try:
            listed = source.fs.get_file_info(
                pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
            )
        except (OSError, pa.ArrowException) as e:
            raise storage_error(source, "cannot list source", e) from e
        paths = sorted(i.path for i in listed if i.type == pafs.FileType.File)
        if glob:
            pattern = tuple(source.path[len(prefix) :].strip("/").split("/"))
            paths = [
                p
                for p in paths
                if _glob_matches(tuple(p[len(prefix) :].strip("/").split("/")), pattern)
            ]
    files = []
    for path in paths:
        relative = path[len(root.path) :].lstrip("/") if root.path else path
        if not explicit and any(_hidden(p) for p in PurePosixPath(relative).parts):
            continue
        uri = f"{source.uri.split('://', 1)[0]}://{path}"
        if not explicit and not _is_data_file(path, partial(_remote_head, source, path)):
            log.warning("%s is not a Parquet file (no .parquet name, no PAR1 magic); skipped", uri)
            continue
        files.append(SourceFile(uri, relative, _hive_keys(relative), source.filesystem))
    if not files:
        raise InputError(f"source {source.uri} holds no data files")
    return files
