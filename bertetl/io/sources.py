"""What a run may ask of its SOURCE, whatever its kind (a local folder or file, an object-store
prefix, a Delta or Iceberg table), so that runs branch on what a SOURCE can do, never on its
kind."""

from __future__ import annotations

from dataclasses import dataclass

from bertetl.io.stores.locations import Location, TableRef


@dataclass(frozen=True)
class SourceCapabilities:
    """What a SOURCE offers a run."""

    #: Read at one pinned version (a table's version or snapshot), streamed into local
    #: Parquet files before a run; False: its Parquet files are read where they are.
    pinned: bool
    #: Read through an object-store client: an executor needs `object_storage` for it.
    object_storage: bool


def source_capabilities(source: object) -> SourceCapabilities:
    """The capabilities of a resolved SOURCE (a path, a `Location`, a `TableRef`)."""
    source = getattr(source, "place", source)
    if isinstance(source, TableRef):
        return SourceCapabilities(pinned=True, object_storage=False)
    remote = isinstance(source, Location) and not source.local
    return SourceCapabilities(pinned=False, object_storage=remote)


def check_source(source: object) -> None:
    """Refuse (one line) a pinned SOURCE that cannot be read (its package or catalog)."""
    source = getattr(source, "place", source)
    if isinstance(source, TableRef):
        from bertetl.io.tables import check_table

        check_table(source)
