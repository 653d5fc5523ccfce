"""Partition commits: a lock per destination, staged partition folders, an atomic swap.

A partition is written whole into `.<DEST name>.bertetl-staging/<random>/` beside DEST (same
filesystem, outside DEST, so no reader of DEST, not even a `DEST/**/*.parquet` glob, sees it),
its manifest last, then swapped with the live folder in one step:
`renameat2(RENAME_EXCHANGE)` on Linux, so readers see the old partition or the new one,
never a mix. Where the kernel or filesystem lacks it, the old folder is renamed aside and
the new one renamed in (two renames; a reader in between sees the partition missing, never
half-written).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bertetl.errors import CommitError
from bertetl.io.write import TEMP_SUFFIX, fsync_dir

STAGING_SUFFIX = ".bertetl-staging"
LOCK_NAME = ".bertetl.lock"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

log = logging.getLogger(__name__)


class DestinationLock:
    """An exclusive lock on DEST (`flock` on `DEST/.bertetl.lock`), so two runs never write
    one destination at once. The kernel drops it when the holder dies, even by SIGKILL."""

    def __init__(self, dest: str | os.PathLike[str]) -> None:
        self.dest = Path(dest)
        self.path = self.dest / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> None:
        """Take the lock; when another run holds it, wait (`wait`) or raise `CommitError`."""
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
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DestinationLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
    """Remove what a killed run left behind (call it holding the lock): staged folders and
    hidden `.*.bertetl-tmp` output files under DEST (`only_file`: just that output's, in
    DEST's top folder). Returns how many were removed."""
    dest = Path(dest)
    removed = 0
    staging = staging_root(dest)
    if staging.is_dir():
        for path in list(staging.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if dest.is_dir():
        pattern = f".{only_file}.*{TEMP_SUFFIX}" if only_file else f".*{TEMP_SUFFIX}"
        leftovers = dest.glob(pattern) if only_file else dest.rglob(pattern)
        for path in list(leftovers):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh hidden folder on DEST's filesystem; removed on exit unless swapped in."""
    path = staging_root(dest) / uuid.uuid4().hex
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise CommitError(f"cannot create staging folder {path}: {e}") from e
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):  # leave no empty folder beside DEST
            path.parent.rmdir()


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


def swap_in(staged: Path, target: Path) -> None:
    """Make `staged` the live folder at `target` in one step; the old folder is deleted."""
    try:
        for path in staged.rglob("*"):
            if path.is_dir():
                fsync_dir(path)
        fsync_dir(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.rename(staged, target)
        elif _exchange(staged, target):
            shutil.rmtree(staged)  # `staged` now names the old partition
        else:
            aside = staged.with_name(staged.name + ".old")
            os.rename(target, aside)
            os.rename(staged, target)
            shutil.rmtree(aside)
        fsync_dir(target.parent)
    except OSError as e:
        raise CommitError(f"cannot commit partition {target}: {e}") from e
