"""Hive partitions of a source table (`date=2026-11-01/…`), the unit of backfills."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bertetl.errors import InputError
from bertetl.io.read import SourceFile, discover


@dataclass(frozen=True)
class Partition:
    """One value of the partition column: its folder under the source root and its files."""

    column: str
    value: str
    folder: str
    files: tuple[SourceFile, ...]

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
    source: str | os.PathLike[str],
    column: str,
    start: str | None = None,
    end: str | None = None,
) -> list[Partition]:
    """The source's partitions of `column` whose value lies in [start, end] (compared as
    strings, so ISO dates sort correctly), sorted by value."""
    grouped: dict[str, list[SourceFile]] = {}
    folders: dict[str, str] = {}
    for file in discover(source):
        folder = _partition_folder(file, column)
        value = file.partition[column]
        if folders.setdefault(value, folder) != folder:
            raise InputError(
                f"partition {column}={value} appears in two folders: {folders[value]} and {folder}"
            )
        grouped.setdefault(value, []).append(file)
    return [
        Partition(column, value, folders[value], tuple(files))
        for value, files in sorted(grouped.items())
        if (start is None or value >= start) and (end is None or value <= end)
    ]


def dest_folder(dest: str | os.PathLike[str], partition: Partition) -> Path:
    """The partition's folder under DEST, checked to stay inside DEST."""
    root = Path(dest).resolve()
    target = (root / partition.folder).resolve()
    if not target.is_relative_to(root) or target == root:
        raise InputError(f"partition folder {partition.folder!r} would write outside {dest}")
    return target
