"""Partition commits: a lock per destination, staged partition folders, an atomic swap.

A partition is written whole into `.<DEST name>.bertetl-staging/<random>/` beside DEST (same
filesystem, outside DEST, so no reader of DEST, not even a `DEST/**/*.parquet` glob, sees it),
its manifest last, then swapped with the live folder in one step:
`renameat2(RENAME_EXCHANGE)` on Linux, so readers see the old partition or the new one,
never a mix. Where the kernel or filesystem lacks it, the old folder is renamed aside and
the new one renamed in (two renames; a reader in between sees the partition missing, never
half-written). Of the old folder, only what bertetl owns is deleted: a file that appeared in it
during the run is moved into the new one (`swap_in`'s `owned`).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Collection, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from bertetl.errors import CommitError
from bertetl.io.scratch import fresh_folder
from bertetl.io.stores.locations import LOCK_NAME, Location, TableRef, is_remote, is_table
from bertetl.io.write import TEMP_SUFFIX, fsync_dir

STAGING_SUFFIX = ".bertetl-staging"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: A temp output file of `ParquetSink`: `.<name>.<random>.bertetl-tmp`.
_TEMP_NAME = re.compile(r"\..+\.[^./]+" + re.escape(TEMP_SUFFIX) + "$")

log = logging.getLogger(__name__)


class DestinationLock:
    """An exclusive lock on DEST (`flock` on `DEST/.bertetl.lock`), so two runs never write
    one destination at once. The kernel drops it when the holder dies, even by SIGKILL.

    A DEST folder that the lock itself created and that holds nothing but the lock file at
    release (the run failed before writing anything, e.g. its model would not load) is
    removed, lock file and all, so a failed run leaves no empty DEST behind. A waiting run
    then finds its lock file unlinked and takes the lock afresh (`acquire` checks that the
    file it locked is still the one at the path)."""

    def __init__(self, dest: str | os.PathLike[str]) -> None:
        self.dest = Path(dest)
        self.path = self.dest / LOCK_NAME
        self._fd: int | None = None
        self._made_dest = False

    def acquire(self, wait: bool = False) -> None:
        """Take the lock; when another run holds it, wait (`wait`) or raise `CommitError`."""
        while True:
            made = not os.path.lexists(self.dest)
            if not made and not self.dest.is_dir():
                raise CommitError(
                    f"DEST {self.dest} is a file, not a folder; give a folder (or, for one "
                    "input file, the path of its .parquet output)"
                )
            try:
                self.dest.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise CommitError(f"cannot create lock file {self.path}: {e}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise CommitError(
                    f"another bertetl run is writing {self.dest} ({holder}); "
                    "wait for it to finish, or pick another DEST"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it (and maybe DEST) before we got it: again
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        self._made_dest = made

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._made_dest and _holds_only_the_lock(self.dest):
                with contextlib.suppress(OSError):  # a file appeared: keep the folder
                    self.path.unlink()
                    self.dest.rmdir()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DestinationLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not unlinked or replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _holds_only_the_lock(folder: Path) -> bool:
    try:
        return os.listdir(folder) == [LOCK_NAME]
    except OSError:
        return False


#: The DEST locks this context holds already (`holding`), by `_lock_key`.
_HELD: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "bertetl_held_locks", default=()
)


class HeldLock:
    """What `destination_lock` gives for a DEST whose lock the caller holds (`holding`):
    acquiring and releasing it do nothing; the holder releases the real one."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@contextlib.contextmanager
def holding(dest: str | os.PathLike[str] | Location | TableRef) -> Iterator[None]:
    """Take DEST's lock (refused at once if another run holds it) and keep it for the code
    inside, where `destination_lock(dest)` gives a `HeldLock`: the CLI holds it from its
    early checks, through starting Prefect's server, to the end of the flow, so no other run
    can start on DEST in between. Only code in this context (this thread, and what it runs
    in copies of its context) sees the hold; another run in this process is still refused."""
    lock = destination_lock(dest)
    lock.acquire()
    token = _HELD.set((*_HELD.get(), _lock_key(dest)))
    try:
        yield
    finally:
        _HELD.reset(token)
        lock.release()


def _lock_key(dest: str | os.PathLike[str] | Location | TableRef) -> str:
    """Which lock `destination_lock(dest)` takes: its place, as a string."""
    if is_table(dest):
        from bertetl.io.tables import lock_place

        assert isinstance(dest, TableRef)
        return _lock_key(lock_place(dest))
    if is_remote(dest):
        assert isinstance(dest, Location)
        return dest.uri
    return str(Path(dest.path if isinstance(dest, Location) else dest).resolve())


def destination_lock(dest: str | os.PathLike[str] | Location | TableRef) -> Any:
    """DEST's one-run lock: `flock` on a local folder (`DestinationLock`), a conditional
    create with a lease on S3 (`bertetl.io.stores.objects.ObjectStoreLock`); a store that
    cannot be locked is refused there. Both are context managers with `acquire`/`release`.
    A table DEST is locked the same way at its lock place (`bertetl.io.tables.lock_place`:
    a sidecar folder beside a Delta table, the warehouse for Iceberg). Inside `holding(dest)`
    it is a `HeldLock`."""
    if is_table(dest):
        from bertetl.io.tables import lock_place

        assert isinstance(dest, TableRef)
        return destination_lock(lock_place(dest))
    if _lock_key(dest) in _HELD.get():
        return HeldLock()
    if is_remote(dest):
        from bertetl.io.stores.objects import ObjectStoreLock

        assert isinstance(dest, Location)
        return ObjectStoreLock(dest)
    return DestinationLock(dest.path if isinstance(dest, Location) else dest)


def staging_for(
    dest: str | os.PathLike[str] | Location | TableRef,
) -> contextlib.AbstractContextManager[Path]:
    """A fresh staging folder for DEST: beside it on its filesystem (`staged_folder`, for
    the staged swap), or on this machine for an object-store DEST (uploaded at commit) or a
    table DEST (read back into one table transaction at commit)."""
    if is_table(dest):
        from bertetl.io.stores.objects import local_staged_folder

        assert isinstance(dest, TableRef)
        return local_staged_folder(_table_key(dest))
    if is_remote(dest):
        from bertetl.io.stores.objects import local_staged_folder

        assert isinstance(dest, Location)
        return local_staged_folder(dest)
    return staged_folder(dest.path if isinstance(dest, Location) else dest)


def clean_leftovers(
    dest: str | os.PathLike[str] | Location | TableRef, only_file: str | None = None
) -> int:
    """`clean_staging` for any DEST: for an object-store DEST, this machine's staging of it
    (nothing half-written can be left on the store: uploads are whole); for a table DEST,
    this machine's staging of it (a table commit is one transaction: nothing is left in it)."""
    if is_table(dest):
        from bertetl.io.stores.objects import clean_local_staging

        assert isinstance(dest, TableRef)
        return clean_local_staging(_table_key(dest))
    if is_remote(dest):
        from bertetl.io.stores.objects import clean_local_staging

        assert isinstance(dest, Location)
        return clean_local_staging(dest)
    return clean_staging(dest.path if isinstance(dest, Location) else dest, only_file)


def _table_key(dest: TableRef) -> Location:
    """A table as the `Location` its local staging is keyed by: its lock place (the run's
    lock guards the staging), which tells apart two Iceberg catalogs that give one table
    name (a URI alone does not: `iceberg://local/db.t` in two warehouses)."""
    from bertetl.io.tables import lock_place

    where = lock_place(dest)
    place = where.uri if isinstance(where, Location) else str(where)
    return Location(place, place)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def staging_root(dest: str | os.PathLike[str]) -> Path:
    """Where DEST's partitions are staged: a hidden folder beside DEST."""
    dest = Path(dest).resolve()
    return dest.parent / f".{dest.name}{STAGING_SUFFIX}"


def clean_staging(dest: str | os.PathLike[str], only_file: str | None = None) -> int:
    """Remove what a killed run on DEST left behind (call it holding DEST's lock): DEST's
    staged folders and bertetl's temp output files (`.<name>.<random>.bertetl-tmp`) under DEST
    (`only_file`: just that output's, in DEST's top folder). Returns how many were removed.

    Only what this lock covers is cleaned: links are not followed, and folders that belong
    to another run are not entered (one holding its own `.bertetl.lock`, i.e. another DEST
    nested inside this one, and other DESTs' `.*.bertetl-staging` folders), so a run never
    deletes the temp file of another run that is still writing."""
    dest = Path(dest)
    removed = 0
    staging = staging_root(dest)
    if staging.is_dir():
        for path in list(staging.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if not dest.is_dir():
        return removed
    if only_file:
        leftovers = [p for p in dest.glob(f".{only_file}.*{TEMP_SUFFIX}") if is_temp_file(p.name)]
    else:
        leftovers = list(_temp_files(dest))
    for path in leftovers:
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def is_temp_file(name: str) -> bool:
    """Whether `name` is a temp output file of bertetl's `ParquetSink`."""
    return _TEMP_NAME.match(name) is not None


def _temp_files(dest: Path) -> Iterator[Path]:
    """bertetl temp files under DEST, not entering links, other DESTs or staging folders."""
    for folder, subfolders, names in os.walk(dest):
        subfolders[:] = [
            name
            for name in subfolders
            if not name.endswith(STAGING_SUFFIX)
            and not os.path.lexists(os.path.join(folder, name, LOCK_NAME))
        ]
        for name in names:
            if is_temp_file(name):
                yield Path(folder) / name


def strays(folder: Path, owned: Collection[str]) -> list[str]:
    """What a partition swap must not delete: the paths under `folder` (relative, links not
    followed) that are neither in `owned` nor bertetl temp files. A folder on the way to an
    owned path is not a stray; any other empty folder, or one that cannot be listed, is
    (shown with a trailing `/`)."""
    owned = set(owned)
    on_the_way = {parent.as_posix() for path in owned for parent in PurePosixPath(path).parents}
    found: list[str] = []

    def unreadable(error: OSError) -> None:
        found.append(Path(error.filename).relative_to(folder).as_posix() + "/")

    for here, subfolders, names in os.walk(folder, onerror=unreadable):
        relative = Path(here).relative_to(folder)
        links = [name for name in subfolders if os.path.islink(os.path.join(here, name))]
        subfolders[:] = [name for name in subfolders if name not in links]
        for name in sorted([*names, *links]):
            path = (relative / name).as_posix()
            if path not in owned and not is_temp_file(name):
                found.append(path)
        if not (subfolders or names or links) and relative.as_posix() not in on_the_way:
            found.append(relative.as_posix() + "/")
    return sorted(found)


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh hidden folder on DEST's filesystem; removed on exit unless swapped in (and the
    staging root beside DEST with it, when left empty)."""
    with fresh_folder(staging_root(dest)) as path:
        yield path


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2; False when the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE)
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def swap_in(staged: Path, target: Path, owned: Collection[str] | None = None) -> None:
    """Make `staged` the live folder at `target` in one step; the old folder is deleted.

    With `owned` (the paths, relative to the folder, that bertetl wrote or writes there),
    anything else found in the old folder once it is out of sight (a file dropped in during
    the run, after the run's own check) is moved into the new folder, never deleted."""
    try:
        for path in staged.rglob("*"):
            if path.is_dir():
                fsync_dir(path)
        fsync_dir(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.rename(staged, target)
        elif _exchange(staged, target):
            _drop_old(staged, target, owned)  # `staged` now names the old partition
        else:
            aside = staged.with_name(staged.name + ".old")
            os.rename(target, aside)
            os.rename(staged, target)
            _drop_old(aside, target, owned)
        fsync_dir(target.parent)
    except OSError as e:
        raise CommitError(f"cannot commit partition {target}: {e}") from e


def _drop_old(old: Path, target: Path, owned: Collection[str] | None) -> None:
    """Delete the old partition folder, after moving what bertetl does not own into the
    new one (`target`, which holds only owned paths, so nothing there is replaced)."""
    if owned is not None:
        for path in strays(old, owned):
            kept = target / path.rstrip("/")
            if os.path.lexists(kept):  # a folder the new partition has too
                continue
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.rename(old / path.rstrip("/"), kept)
            log.warning("%s appeared during the run; kept in the new partition", kept)
    shutil.rmtree(old)
