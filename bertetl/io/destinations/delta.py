"""A Delta Lake table as DEST (`delta:///PATH`, `delta://s3://BUCKET/PATH`); the format's
reading and committing live in `bertetl.io.tables`."""

from __future__ import annotations

from pathlib import Path

from bertetl.io.destinations.table import TableDestination


class DeltaTable(TableDestination):
    """A Delta Lake table, locked by a sidecar folder beside it."""

    kind = "delta"
    format = "delta"

    def check(self) -> None:
        """The table's package loads, and a local table's folder lies neither inside another
        run's DEST nor holds one (`nesting`): its files would be read as that DEST's."""
        super().check()
        if self.place.local:
            from bertetl.io.destinations.nesting import local_nesting

            local_nesting(Path(self.place.address))
