"""The table formats, by the URI scheme that names them: the one place that lists them.

Adding a format is one module (a class that implements `bertetl.io.tables.base.TableFormat`)
and one line in `FORMATS`. Everything else derives from it: which URIs are tables and how
each is parsed (`bertetl.io.stores.locations.is_table_uri`, `parse_table`), the extra a
missing package names, and the shared reading and committing code (`bertetl.io.tables.source`,
`.dest`).

The lines name each format's class as "module:class" (as `bertetl.executors.EXECUTORS` does),
imported when a table of that scheme is first parsed or opened: `bertetl.io.stores.locations`
asks the registry how to parse an address, and the formats use it for their locations and
errors, so the registry imports no format module at its top.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Table format URI scheme (`SCHEME://ADDRESS`) -> "module:class" of its `TableFormat`.
FORMATS: dict[str, str] = {
    "delta": "bertetl.io.tables.delta:DeltaFormat",
    "iceberg": "bertetl.io.tables.iceberg:IcebergFormat",
    "lance": "bertetl.io.tables.lance:LanceFormat",
}


def format_class(scheme: str) -> Any:
    """The `TableFormat` class registered for `scheme` (a `KeyError` when none is); typed by
    its callers as `type[TableFormat]` (`bertetl.io.tables.base.format_of`)."""
    module_name, class_name = FORMATS[scheme].split(":")
    return getattr(importlib.import_module(module_name), class_name)
