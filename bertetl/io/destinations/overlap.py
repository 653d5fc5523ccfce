"""Whether a SOURCE and a DEST are one place, or one holds the other (a run never writes its
input), across kinds: tables, local folders, a local Delta table's folder."""

from __future__ import annotations

from pathlib import Path

from bertetl.io.stores.locations import Location, TableRef


def overlaps(source: object, dest: object) -> bool:
    """Whether SOURCE and DEST are one table, or a local Delta table and a local folder
    one of which lies in the other."""

    def local_path(side: object) -> Path | None:
        if isinstance(side, TableRef):
            return Path(side.address).resolve() if side.local else None
        if isinstance(side, Location):
            return Path(side.path).resolve() if side.local else None
        return Path(side).resolve()  # type: ignore[arg-type]

    if isinstance(source, TableRef) and isinstance(dest, TableRef) and source.uri == dest.uri:
        return True
    here, there = local_path(source), local_path(dest)
    if here is None or there is None:
        return False
    return here == there or here.is_relative_to(there) or there.is_relative_to(here)
