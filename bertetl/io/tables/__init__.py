"""Tables (Delta Lake, Iceberg, ...) as SOURCE and DEST of partitioned runs, one module per
format behind one protocol (`base.TableFormat`), found by URI scheme in `registry.FORMATS`.

A table is addressed as `SCHEME://ADDRESS`: `delta://PATH_OR_URI` (`delta:///data/t`,
`delta://s3://bucket/t`; the `delta` extra, `deltalake`) or `iceberg://CATALOG/NAMESPACE.TABLE`
(the `iceberg` extra, `pyiceberg`; the catalog from pyiceberg's own configuration).
`bertetl.io.stores.locations` parses the address into a `TableRef`, asking its format; this package
reads and commits it.

As SOURCE (`source`), a run reads one version or snapshot pinned at its start (`pin`). The
partitions and their input fingerprints come from the table's metadata (the data files of the
pinned version in each partition: path, size, deletion vectors or delete files), so a
partition is skipped without reading its rows; one that is enriched is first read into a
local Parquet file (`materialize`, the partition filter pushed down).

As DEST (`dest`), each partition is committed as ONE table transaction that replaces exactly
that partition (`commit_partition`). The partition's manifest (the JSON of
`bertetl.io.manifest.Manifest`) travels in the commit's own metadata (Delta commit info,
Iceberg snapshot summary) under `MANIFEST_KEY`, and `commit_records` reads it back, so
`incremental` decides from the table alone. See docs/STORAGE.md.

This package knows no `Manifest`: it moves the manifest as JSON text, and `io.manifest` and
`io.partitions` turn it (and the fingerprints) into their models.

Callers import the functions from here (`from bertetl.io.tables import commit_partition`), at
the call, so that a test's patch of this package's attribute is what they run.
"""

from __future__ import annotations

from bertetl.io.tables.base import (
    MANIFEST_KEY,
    SIDECAR_SUFFIX,
    TableCommit,
    TableFile,
    TableFormat,
    TablePartition,
    TableSnapshot,
    missing_extra,
    open_table,
)
from bertetl.io.tables.delta import delta_location_options, delta_storage_options
from bertetl.io.tables.dest import (
    commit_partition,
    commit_problem,
    commit_records,
    count_commits,
    is_foreign,
    keyed_rows,
    last_record,
    lock_place,
    merge_rows,
    read_committed,
    read_partition,
    replace_table,
    table_type,
)
from bertetl.io.tables.iceberg import FIELD_METADATA_PREFIX
from bertetl.io.tables.lance import lance_storage_options
from bertetl.io.tables.registry import FORMATS
from bertetl.io.tables.source import (
    ROW_GROUP_ROWS,
    check_table,
    materialize,
    materialize_all,
    partition_columns,
    pin,
    source_partitions,
    source_schema,
)

__all__ = [
    "FIELD_METADATA_PREFIX",
    "FORMATS",
    "MANIFEST_KEY",
    "ROW_GROUP_ROWS",
    "SIDECAR_SUFFIX",
    "TableCommit",
    "TableFile",
    "TableFormat",
    "TablePartition",
    "TableSnapshot",
    "check_table",
    "commit_partition",
    "commit_problem",
    "commit_records",
    "count_commits",
    "delta_location_options",
    "delta_storage_options",
    "is_foreign",
    "keyed_rows",
    "lance_storage_options",
    "last_record",
    "lock_place",
    "materialize",
    "materialize_all",
    "merge_rows",
    "missing_extra",
    "open_table",
    "partition_columns",
    "pin",
    "read_committed",
    "read_partition",
    "replace_table",
    "source_partitions",
    "source_schema",
    "table_type",
]
