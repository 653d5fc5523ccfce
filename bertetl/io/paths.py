"""Where a run's outputs go, and the check that a run never writes into its input."""

from __future__ import annotations

import os
from pathlib import Path

from bertetl.errors import InputError
from bertetl.io.read import SourceFile, source_root


def dest_path(file: SourceFile, source: str, dest: str) -> Path:
    """Where a file's output goes: DEST itself for a single-file source and a `.parquet`
    DEST, else DEST/<the file's path under the source root> (partition folders kept)."""
    if os.path.isfile(source) and dest.endswith(".parquet"):
        return Path(dest)
    return Path(dest) / file.relative


def dest_root(source: str, dest: str) -> tuple[Path, str | None]:
    """The folder a run locks and cleans, and the one output file name when DEST is a file."""
    if os.path.isfile(source) and dest.endswith(".parquet"):
        return Path(dest).parent, Path(dest).name
    return Path(dest), None


def check_paths(files: list[SourceFile], source: str, dest: str) -> None:
    """Refuse a DEST that would overwrite an input, holds an input, or lies inside SOURCE."""
    dest_real = Path(dest).resolve()
    for file in files:
        if Path(file.path).resolve() == dest_path(file, source, dest).resolve():
            raise InputError(f"output {dest} would overwrite input {file.path}; pick another DEST")
        if Path(file.path).resolve().is_relative_to(dest_real):
            raise InputError(
                f"input {file.path} lies inside DEST {dest}; pick a DEST outside the source"
            )
    if not os.path.isfile(source) and dest_real.is_relative_to(source_root(source).resolve()):
        raise InputError(f"DEST {dest} lies inside SOURCE {source}; pick a DEST outside it")
