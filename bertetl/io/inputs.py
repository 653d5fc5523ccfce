"""A command's input tables (`train`, `evaluate`, `bench`): a local path, an object-store URI,
or a Delta Lake / Iceberg table read at one version into a local Parquet copy."""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from bertetl.io.scratch import run_scratch
from bertetl.io.stores import locations as storage
from bertetl.io.stores.locations import (
    Location,
    StorageError,
    TableRef,
    is_remote,
    is_table_uri,
    is_uri,
)


def resolve_inputs(
    paths: Iterable[str | os.PathLike[str] | Location], options: Mapping[str, str] | None = None
) -> list[str | Location]:
    """Each input as the commands read it: a URI a `Location` opened with `options`, a local
    path as given, and a table (`delta://...`, `iceberg://...`) pinned at its current version
    and streamed into a local Parquet file (`stage_table`). Options with no URI or table on an
    object store among them are refused (they would be ignored without a word)."""
    given = list(paths)
    takes = [p for p in given if is_uri(p) or is_remote(p) or is_table_uri(p)]
    if options and not takes:
        names = " and ".join(os.fspath(p) for p in given)
        are = "is a local path" if len(given) == 1 else "are local paths"
        raise StorageError(f"--storage-option is for object-store URIs (s3://...); {names} {are}")
    resolved: list[str | Location] = []
    for path in given:
        if is_table_uri(path):
            resolved.append(str(stage_table(storage.resolve(path, options))))
        elif isinstance(path, Location):
            resolved.append(path)
        elif is_uri(path):
            resolved.append(storage.parse_location(path, options))
        else:
            resolved.append(os.fspath(path))
    return resolved


def stage_table(ref: TableRef) -> Path:
    """The table at its current version (Delta) or snapshot (Iceberg), every partition with its
    partition columns, streamed into `<scratch>/<table>.parquet` (`materialize_all`); returns
    that folder, removed when this process exits (or, if it is killed, by the next run that
    makes a scratch folder: `bertetl.io.scratch`)."""
    from bertetl.io import tables

    tables.check_table(ref)
    scratch = contextlib.ExitStack()
    folder = scratch.enter_context(run_scratch("table-"))  # a killed run's: see io.scratch
    atexit.register(scratch.close)
    tables.materialize_all(tables.pin(ref), folder)
    return folder
