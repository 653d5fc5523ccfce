"""Every place a run writes, one class per kind behind one protocol (`Destination`).

`DESTINATIONS` is the one place that names the kinds. `parse_destination` turns DEST (and its
storage options) into one, once, where a run is resolved; `as_destination` takes what a caller
already has (a destination, a path, a `Location`, a `TableRef`). Adding a kind is one module
and one line here, and `tests/io/test_destinations.py`'s contract passing for it
(ARCHITECTURE.md, "Adding a destination").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from bertetl.io.destinations.base import Capabilities, Destination, IndexSpec
from bertetl.io.destinations.delta import DeltaTable
from bertetl.io.destinations.iceberg import IcebergTable
from bertetl.io.destinations.lance import LanceDataset
from bertetl.io.destinations.local import LocalFolder
from bertetl.io.destinations.objectstore import ObjectStorePrefix
from bertetl.io.destinations.overlap import overlaps
from bertetl.io.destinations.postgres import PostgresTable
from bertetl.io.stores.locations import resolve, resolve_run

#: The kinds of destination, by name; the first that accepts a resolved DEST is its class.
DESTINATIONS: dict[str, Any] = {
    "folder": LocalFolder,
    "object-store": ObjectStorePrefix,
    "delta": DeltaTable,
    "iceberg": IcebergTable,
    "lance": LanceDataset,
    "postgresql": PostgresTable,
}


def as_destination(dest: object) -> Destination:
    """`dest` as a destination: returned as it is when it is one; a path, a `Location` or a
    `TableRef` (already resolved) wrapped by the kind that accepts it."""
    if isinstance(dest, Destination):
        return dest
    for kind in DESTINATIONS.values():
        if kind.accepts(dest):
            found: Destination = kind(dest)
            return found
    raise TypeError(f"no destination kind takes {dest!r}")


def parse_destination(
    dest: str | os.PathLike[str] | object, options: Mapping[str, str] | None = None
) -> Destination:
    """DEST as the user gave it (a path, `s3://...`, `delta://...`, `iceberg://...`), opened
    with its storage options, as a destination."""
    if isinstance(dest, Destination):
        return dest
    return as_destination(resolve(dest, options))  # type: ignore[arg-type]


def parse_run(
    source: str | os.PathLike[str] | object,
    dest: str | os.PathLike[str] | object,
    options: Mapping[str, str] | None = None,
    overwrite_foreign: bool = False,
    index: IndexSpec | None = None,
) -> tuple[Any, Destination]:
    """SOURCE resolved (a path, a `Location`, a `TableRef`) and DEST as a destination; storage
    options that neither takes are refused (`resolve_run`). `overwrite_foreign`: the user
    knowingly lets the run replace a table bertetl did not write (`--overwrite-foreign`).
    `index`: the vector index DEST builds and keeps up to date (`--index`; refused in one line
    where DEST builds no index of that kind)."""
    if isinstance(dest, Destination):
        overwrite_foreign = overwrite_foreign or dest.overwrite_foreign
    source = getattr(source, "place", source)
    place = getattr(dest, "place", dest)
    run_source, run_dest = resolve_run(source, place, options)  # type: ignore[arg-type]
    destination = as_destination(run_dest)
    destination.overwrite_foreign = overwrite_foreign
    if isinstance(dest, Destination) and index is None:
        index = dest.index
    if index is not None and index.kind not in destination.capabilities.indexes:
        from bertetl.errors import InputError

        built = ", ".join(destination.capabilities.indexes) or "no vector index"
        raise InputError(f"--index {index.kind}: DEST {destination.uri} builds {built}")
    destination.index = index
    return run_source, destination


__all__ = [
    "DESTINATIONS",
    "Capabilities",
    "DeltaTable",
    "Destination",
    "IcebergTable",
    "IndexSpec",
    "LanceDataset",
    "LocalFolder",
    "ObjectStorePrefix",
    "PostgresTable",
    "as_destination",
    "overlaps",
    "parse_destination",
    "parse_run",
]
