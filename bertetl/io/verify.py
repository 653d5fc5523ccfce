"""Which outputs under a DEST of files can be read, and which are damaged: the files are the
truth, a manifest is a claim. In a folder with a `_manifest.json`, the outputs it lists are
verified against it and only those that verify are read; files it does not list are left out.
Elsewhere (the output of `bertetl enrich`), every data file is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from bertetl.errors import InputError
from bertetl.io.manifest import (
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    verified_outputs,
    verify_outputs,
)
from bertetl.io.read import SourceFile, discover
from bertetl.io.stores.locations import Location


@dataclass(frozen=True)
class DamagedFile:
    """An output that is not read: `folder` and `file` relative to DEST, and why."""

    folder: str
    file: str
    problem: str


#: Why a file in a committed partition folder that its manifest does not list is left out of
#: the counts (a copy of an output, a file dropped in): listed as not bertetl's, no damage.
UNLISTED = "not bertetl output: not listed by its partition's manifest (readers see it)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _relative(path: PurePath, root: PurePath) -> str:
    """`path` as shown to users: relative to DEST (to its folder when DEST is a file; an
    object-store DEST, a `PurePosixPath` of its path on the store, is a prefix)."""
    base = root if not isinstance(root, Path) or root.is_dir() else root.parent
    try:
        return path.relative_to(base).as_posix() if path != base else "."
    except ValueError:
        return str(path)


def _damaged_file(path: PurePath, root: PurePath, problem: str) -> DamagedFile:
    return DamagedFile(_relative(path.parent, root), _relative(path, root), problem)


def _manifests(dest: Path) -> dict[Path, Manifest | None]:
    """Every folder under DEST with a `_manifest.json` (hidden folders skipped, as readers
    skip them), with its manifest or None when that cannot be read."""
    if not dest.is_dir():
        return {}
    found: dict[Path, Manifest | None] = {}
    for path in sorted(dest.rglob(MANIFEST_NAME)):
        if any(part.startswith((".", "_")) for part in path.relative_to(dest).parts[:-1]):
            continue
        found[path.parent] = read_manifest(path.parent)
    return found


def _remote_manifests(dest: Location) -> dict[Location, Manifest | None]:
    """`_manifests` on an object store: from one listing of DEST."""
    from bertetl.io.partitions import remote_files

    found: dict[Location, Manifest | None] = {}
    for relative in remote_files(dest):
        parts = PurePosixPath(relative).parts
        if parts[-1] != MANIFEST_NAME or any(p.startswith((".", "_")) for p in parts[:-1]):
            continue
        folder = dest / str(PurePosixPath(relative).parent)
        found[folder] = read_manifest(folder)
    return found


def remote_outputs(dest: Location) -> tuple[list[SourceFile], list[DamagedFile]]:
    """`local_outputs` on an object store (paths compared as they are: no links there)."""
    root = PurePosixPath(dest.path)
    folders = _remote_manifests(dest)
    damaged: list[DamagedFile] = []
    claimed: set[str] = set()
    listed: set[str] = set()
    for folder, manifest in folders.items():
        where = _relative(PurePosixPath(folder.path), root)
        if manifest is None:
            problem = "unreadable manifest; the folder's files are read as found"
            damaged.append(DamagedFile(where, f"{where}/{MANIFEST_NAME}", problem))
            continue
        damage = verify_outputs(folder, manifest)
        for item in damage:
            name = PurePosixPath(folder.path) / item.relative
            damaged.append(DamagedFile(where, _relative(name, root), item.problem))
        claimed.update(f"{folder.path}/{name}" for name in verified_outputs(manifest, damage))
        listed.update(f"{folder.path}/{name}" for name in manifest.outputs)
    committed = {PurePosixPath(f.path) for f, m in folders.items() if m is not None}
    try:
        found = discover(dest)
    except InputError:
        if not committed:
            raise
        found = []
    files = []
    for file in found:
        if file.fs_path in claimed or not committed & set(PurePosixPath(file.fs_path).parents):
            files.append(file)
        elif file.fs_path not in listed:  # readers see it; the counts leave it out, and say so
            damaged.append(_damaged_file(PurePosixPath(file.fs_path), root, UNLISTED))
    return files, damaged


def local_outputs(root: Path) -> tuple[list[SourceFile], list[DamagedFile]]:
    """The data files under DEST to read, and the damaged ones: in a folder with a manifest,
    the outputs it lists that verify (`verify_outputs`); elsewhere, every data file."""
    dest = root
    folders = _manifests(root)
    damaged: list[DamagedFile] = []
    claimed: set[Path] = set()
    listed: set[Path] = set()
    for folder, manifest in folders.items():
        where = _relative(folder, root)
        if manifest is None:
            problem = "unreadable manifest; the folder's files are read as found"
            damaged.append(DamagedFile(where, f"{where}/{MANIFEST_NAME}", problem))
            continue
        damage = verify_outputs(folder, manifest)
        for item in damage:
            name = (folder / item.relative) if item.relative else folder
            damaged.append(DamagedFile(where, _relative(name, root), item.problem))
        claimed.update((folder / name).resolve() for name in verified_outputs(manifest, damage))
        listed.update((folder / name).resolve() for name in manifest.outputs)
    committed = {folder.resolve() for folder, manifest in folders.items() if manifest is not None}
    try:
        found = discover(dest)
    except InputError:
        if not committed:
            raise
        found = []  # every output listed is gone: the damage says so
    files = []
    for file in found:  # compared as real paths: however discovery spells them
        path = Path(file.path).resolve()
        if path in claimed or not committed & set(path.parents):
            files.append(file)
        elif path not in listed:  # readers see it; the counts leave it out, and say so
            damaged.append(_damaged_file(Path(file.path), root, UNLISTED))
    return files, damaged
