"""Where a run's outputs go, and the check that a run never writes into its input."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from bertetl.errors import InputError
from bertetl.io.read import SourceFile, discover, remote_source_root, source_root
from bertetl.io.stores.locations import Location, is_remote


def _single_file(source: str | Location) -> bool:
    if isinstance(source, Location):
        return source.is_file() if not source.local else os.path.isfile(source.path)
    return os.path.isfile(source)


def dest_path(file: SourceFile, source: str | Location, dest: str | Location) -> Path | Location:
    """Where a file's output goes: DEST itself for a single-file source and a `.parquet`
    DEST, else DEST/<the file's path under the source root> (partition folders kept). An
    object-store DEST gives a `Location`."""
    if isinstance(dest, Location):
        if not dest.local:
            if _single_file(source) and dest.path.endswith(".parquet"):
                return dest
            return dest / file.relative
        dest = dest.path
    if isinstance(source, Location):
        source = source.path if source.local else source.uri
    if _single_file(source) and dest.endswith(".parquet"):
        return Path(dest)
    return Path(dest) / file.relative


def dest_root(source: str | Location, dest: str | Location) -> tuple[Any, str | None]:
    """The folder a run locks and cleans, and the one output file name when DEST is a file
    (a `Location` for an object-store DEST)."""
    if is_remote(dest):
        assert isinstance(dest, Location)
        if _single_file(source) and dest.path.endswith(".parquet"):
            return dest.parent, dest.name
        return dest, None
    if isinstance(dest, Location):
        dest = dest.path
    if isinstance(source, Location):
        source = source.path if source.local else source.uri
    if os.path.isfile(source) and dest.endswith(".parquet"):
        return Path(dest).parent, Path(dest).name
    return Path(dest), None


def _shown(path: str | os.PathLike[str], real: Path) -> str:
    """`path`, with where it really leads when a link (or `..`) hides that."""
    return str(path) if Path(os.path.abspath(path)) == real else f"{path} (= {real})"


def check_paths(files: list[SourceFile], source: str, dest: str) -> None:
    """Refuse a DEST that is SOURCE, lies inside it, holds it, or would overwrite one of
    its files, as an `InputError` naming both paths.

    Paths are compared resolved (links followed, `..` removed), so a link cannot hide any of
    these, and every input file is checked where it really is (a partition linked in from
    elsewhere counts where it lives). A folder or glob SOURCE is its root (the folder output
    paths mirror); a file SOURCE is that file.
    """
    dest_real = Path(dest).resolve()
    if not os.path.isfile(source):
        root = source_root(source)
        root_real = root.resolve()
        dest_shown, source_shown = _shown(dest, dest_real), _shown(source, root_real)
        if dest_real == root_real:
            raise InputError(
                f"DEST {dest_shown} is SOURCE {source_shown}; a run never writes into its "
                "input: pick a DEST outside it"
            )
        if dest_real.is_relative_to(root_real):
            raise InputError(
                f"DEST {dest_shown} lies inside SOURCE {source_shown}; pick a DEST outside it"
            )
        if root_real.is_relative_to(dest_real):
            raise InputError(
                f"SOURCE {source_shown} lies inside DEST {dest_shown}; pick a DEST outside "
                "the source"
            )
    for file in files:
        real = Path(file.path).resolve()
        target = Path(dest_path(file, source, dest))  # local here: a Path
        if real == target.resolve():
            raise InputError(
                f"output {target} would overwrite input {_shown(file.path, real)}; "
                f"pick a DEST outside SOURCE {source}"
            )
        if real.is_relative_to(dest_real):
            raise InputError(
                f"input {_shown(file.path, real)} lies inside DEST {_shown(dest, dest_real)}; "
                "pick a DEST outside the source"
            )


def check_remote_paths(files: list[SourceFile], source: Location, dest: Location) -> None:
    """`check_paths` where SOURCE or DEST is on an object store: refuse a DEST that is
    SOURCE's root, lies inside it, or holds it (compared as paths on one store; there are
    no links to follow), and check that DEST can be written (`objectstore.writable`)."""
    if is_remote(dest):
        from bertetl.io.stores.objects import writable

        writable(dest)
    if source.store != dest.store:
        return
    root = remote_source_root(source)
    if dest.path.rstrip("/") == root.path.rstrip("/"):
        raise InputError(
            f"DEST {dest.uri} is SOURCE {source.uri}; a run never writes into its input: "
            "pick a DEST outside it"
        )
    if dest.is_relative_to(root):
        raise InputError(f"DEST {dest.uri} lies inside SOURCE {source.uri}; pick a DEST outside it")
    if root.is_relative_to(dest):
        raise InputError(
            f"SOURCE {source.uri} lies inside DEST {dest.uri}; pick a DEST outside the source"
        )


def check_run_paths(
    source: str | os.PathLike[str] | Location, dest: str | os.PathLike[str] | Location
) -> list[SourceFile]:
    """The one check every writing command makes before it locks or writes anything: SOURCE
    exists and holds data files, and DEST is not SOURCE, inside it, around it, and would
    overwrite none of its files (`check_paths`). Returns SOURCE's files."""
    if is_remote(source) or is_remote(dest):
        source_loc = (
            source
            if isinstance(source, Location)
            else Location(os.fspath(source), os.fspath(source))
        )
        dest_loc = (
            dest if isinstance(dest, Location) else Location(os.fspath(dest), os.fspath(dest))
        )
        files = discover(source_loc)
        check_remote_paths(files, source_loc, dest_loc)
        return files
    if isinstance(source, Location):
        source = source.path
    if isinstance(dest, Location):
        dest = dest.path
    source, dest = os.fspath(source), os.fspath(dest)
    files = discover(source)
    check_paths(files, source, dest)
    return files


def check_replaceable_folder(
    given: str | os.PathLike[str],
    label: str,
    kind: str,
    holds: str,
    marker: str,
    owned: tuple[str, ...] = (),
) -> Path:
    """The resolved folder a command replaces whole: refused when it is a file, a non-empty
    folder without `marker` (so only an earlier output of the same command is replaced), or
    one that holds files the command does not write (a path matching none of the `owned`
    glob patterns, e.g. a user's notes added to an earlier output: replacing the folder would
    delete them)."""
    path = Path(given).resolve()
    if path.exists() and not path.is_dir():
        raise InputError(f"{label} {given} is a file; give a folder for the {kind}")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise InputError(
            f"{label} {given} is a non-empty folder that holds no {holds} (no {marker}); "
            "give a new or empty folder"
        )
    if owned and path.is_dir():
        foreign = [
            relative
            for relative in _files_below(path)
            if not any(fnmatch.fnmatchcase(relative, pattern) for pattern in owned)
        ]
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            raise InputError(
                f"{label} {given} holds {len(foreign)} file(s) an earlier {kind} does not: "
                f"{shown}; the folder is replaced whole, so move them out (or give another "
                "folder)"
            )
    return path


def _files_below(folder: Path) -> list[str]:
    """Every file under `folder` (links not followed), relative to it, sorted."""
    found = []
    for here, _, names in os.walk(folder):
        for name in names:
            found.append((Path(here) / name).relative_to(folder).as_posix())
    return sorted(found)


def absolute_target(target: Path | Location) -> Path | Location:
    """A job's target as every node names it: an object-store `Location` as it is, a path
    made absolute."""
    return target if is_remote(target) else Path(target).resolve()


def is_json_result(path: Path, keys: frozenset[str]) -> bool:
    """Whether `path` holds a JSON object with every one of `keys` at its top: an earlier
    result of the command that writes those (a run's report, a bench's results), which may be
    replaced; anything else (a Parquet file, another tool's JSON, a table's metadata, another
    DEST's manifest) may not."""
    import json

    try:
        with open(path, "rb") as handle:
            found = json.loads(handle.read(64 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and keys <= found.keys()


def check_output_file(
    given: str | os.PathLike[str],
    label: str,
    inputs: list[str] | None = None,
    makes_folder: bool = False,
    keys: frozenset[str] = frozenset(),
) -> Path:
    """Refuse, before the work, a file a command writes beside its outputs (`--report`,
    `bench --out`): a folder, one of the `inputs` (local files, or folders it must not lie
    in), an existing file that is not an earlier JSON result with `keys` (`is_json_result`),
    or (unless
    the command `makes_folder`) a path in a folder that does not exist. Returns the path
    resolved."""
    path = Path(given).resolve()
    if path.is_dir():
        raise InputError(f"{label} {given} is a folder; give the path of a JSON file")
    if not makes_folder and not path.parent.is_dir():
        raise InputError(f"{label} {given}: folder {path.parent} does not exist; create it first")
    for entry in inputs or []:
        root = Path(entry).resolve()
        if path == root or root in path.parents:
            raise InputError(
                f"{label} {given} lies in or is the input {entry}; a command never writes over "
                "its input: give another path"
            )
    if path.exists() and not is_json_result(path, keys):
        raise InputError(
            f"{label} {given} exists and is not a JSON result of an earlier run; it would be "
            "overwritten: give a new path (only an earlier report or result is replaced)"
        )
    return path
