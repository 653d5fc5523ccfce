"""A Delta Lake table as DEST (`delta:///PATH`, `delta://s3://BUCKET/PATH`); the format's
reading and committing live in `bertetl.io.tables`."""

from __future__ import annotations

from bertetl.io.destinations.table import TableDestination


class DeltaTable(TableDestination):
    """A Delta Lake table, locked by a sidecar folder beside it."""

    kind = "delta"
    format = "delta"
