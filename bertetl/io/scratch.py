"""Scratch folders in the system's temp folder that a killed run does not leave behind.

A run that stages a whole table SOURCE into local Parquet (`bertetl enrich` from a Delta or
Iceberg table, `stage_table` for the commands that read one) writes a full copy of it to the
temp folder. A SIGKILLed or OOM-killed run never removes its copy, and a retried job would
pile them up. So each scratch folder holds `.held`, a file its run keeps `flock`ed for as long
as the folder is in use; the kernel drops that lock when the run dies, however it dies. Every
run that makes a scratch folder first removes the folders whose `.held` it can lock: those of
runs that are gone. `.held` appears already locked (locked under a temporary name, then
renamed), so no run can take a live folder for a dead one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: The file a live run keeps locked in each of its scratch folders.
HELD = ".held"


@contextlib.contextmanager
def fresh_folder(root: Path) -> Iterator[Path]:
    """A new folder of a random name under `root` (made with its parents), removed on exit,
    and `root` too when nothing else is left in it; a folder that cannot be made is a
    `CommitError` naming it."""
    from bertetl.errors import CommitError

    path = root / uuid.uuid4().hex
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise CommitError(f"cannot create staging folder {path}: {e}") from e
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):  # leave no empty folder behind
            root.rmdir()


def scratch_root() -> Path:
    """This user's folder of run scratch folders, in the system's temp folder."""
    return Path(tempfile.gettempdir()) / f"bertetl-scratch-{os.getuid()}"


@contextlib.contextmanager
def run_scratch(prefix: str) -> Iterator[Path]:
    """A new private folder for this run's scratch files, removed on exit (and, if the run is
    killed, by the next run that makes one: `reap_scratch`)."""
    root = scratch_root()
    root.mkdir(mode=0o700, exist_ok=True)
    reap_scratch(root)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    holding = folder / f"{HELD}.tmp"
    fd = os.open(holding, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(holding, folder / HELD)  # visible only once locked
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def reap_scratch(root: Path | None = None) -> int:
    """Remove the scratch folders of runs that are gone (their `.held` can be locked);
    returns how many. A folder without `.held` is being made, or is not bertetl's: kept."""
    root = root or scratch_root()
    removed = 0
    try:
        folders = list(root.iterdir())
    except OSError:
        return 0
    for folder in folders:
        try:
            fd = os.open(folder / HELD, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its run is alive
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
            log.info("removed %s, the scratch folder of a run that was killed", folder)
        finally:
            os.close(fd)
    return removed
