"""An Iceberg table as DEST (`iceberg://CATALOG/NAMESPACE.TABLE`); the format's reading and
committing live in `bertetl.io.tables`."""

from __future__ import annotations

from bertetl.io.destinations.table import TableDestination


class IcebergTable(TableDestination):
    """An Iceberg table in a catalog, locked in its warehouse."""

    kind = "iceberg"
    format = "iceberg"
