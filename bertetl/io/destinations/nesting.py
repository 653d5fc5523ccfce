"""A DEST inside another run's DEST, or holding one, is refused: readers of the outer DEST would
see the inner one's rows as its own (twice, where both hold them), and the outer run's commits
would fold the inner run's files in. Another run's DEST is known by its lock (`.bertetl.lock`,
left in a local DEST) or, above DEST, by a partition's `_manifest.json`."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from bertetl.errors import InputError
from bertetl.io.manifest import MANIFEST_NAME
from bertetl.io.stores.locations import LOCK_NAME, Location


def _refuse(dest: object, other: object, inside: bool) -> None:
    if inside:
        raise InputError(
            f"DEST {dest} lies inside another run's DEST {other}; readers of {other} would "
            "see this run's rows as its own: pick a DEST outside it"
        )
    raise InputError(
        f"DEST {dest} holds another run's DEST {other}; readers of {dest} would see its rows "
        "as this run's: pick a DEST that holds no other, or move it out"
    )


def local_nesting(dest: Path) -> None:
    """Refuse a local DEST with another run's lock or partition manifest in a folder above it,
    or another run's lock in a folder below it (links not followed, hidden folders skipped:
    staging folders are hidden)."""
    real = Path(os.path.realpath(dest))
    for above in real.parents:
        if (above / LOCK_NAME).is_file() or (above / MANIFEST_NAME).is_file():
            _refuse(dest, above, inside=True)
    if not real.is_dir():
        return
    for here, folders, _ in os.walk(real):
        folders[:] = [f for f in folders if not f.startswith(".")]
        for name in folders:
            if (Path(here) / name / LOCK_NAME).is_file():
                _refuse(dest, Path(here) / name, inside=False)


def remote_nesting(dest: Location) -> None:
    """`local_nesting` on an object store: a lock object (a run holds it now) or a partition
    manifest at a prefix above DEST, or a lock object below it (one listing)."""
    import pyarrow.fs as pafs

    above = dest
    while above.key:
        above = above.parent
        for marker in (LOCK_NAME, MANIFEST_NAME):
            if (above / marker).exists():
                _refuse(dest, above, inside=True)
    listed = dest.fs.get_file_info(
        pafs.FileSelector(dest.path, recursive=True, allow_not_found=True)
    )
    for info in listed:
        relative = PurePosixPath(info.path[len(dest.path) + 1 :])
        hidden = any(p.startswith(".") for p in relative.parts[:-1])
        if relative.name == LOCK_NAME and len(relative.parts) > 1 and not hidden:
            _refuse(dest, dest / str(relative.parent), inside=False)
