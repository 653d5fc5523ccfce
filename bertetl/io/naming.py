"""Dataset names by OpenLineage's naming spec (spec/Naming.md): a place as `(namespace, name)`.

A local path is `("file", "/abs/path")`; an object-store prefix `("s3://BUCKET", "KEY")`,
`("gs://BUCKET", "KEY")`, `("abfss://CONTAINER@ACCOUNT.dfs.core.windows.net", "PATH")`; a table
stored at a path or URI (Delta) is named by that location, and a catalog table (Iceberg's
`CATALOG/NAMESPACE.TABLE`) as `("SCHEME://CATALOG", "NAMESPACE.TABLE")`, which stays the same
whether or not the table exists yet. The strings come from `openlineage-python`'s naming
helpers (`openlineage.client.naming.dataset`), imported only when lineage is emitted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa

from bertetl.io.stores.locations import SCHEMES, Location, TableRef, is_uri


def dataset_name(place: object) -> tuple[str, str]:
    """The `(namespace, name)` of a resolved SOURCE or DEST place (a path, a `Location`, a
    `TableRef`, or a destination, whose `place` is read)."""
    place = getattr(place, "place", place)
    if isinstance(place, TableRef):
        return table_name(place)
    if isinstance(place, Location):
        return uri_name(place.uri, dict(place.options)) if not place.local else path_name(place)
    return path_name(place)  # type: ignore[arg-type]


def path_name(path: str | os.PathLike[str]) -> tuple[str, str]:
    """A local path: namespace `file`, its absolute path as the name."""
    from openlineage.client.naming.dataset import LocalFileSystem

    naming = LocalFileSystem(path=str(Path(os.fspath(path)).resolve()))
    return naming.get_namespace(), naming.get_name()


def uri_name(uri: str, options: Mapping[str, str] | None = None) -> tuple[str, str]:
    """An object-store URI (`s3://`, `gs://`, `abfs[s]://`, `az://`); Azure's account comes
    from the storage options (`account_name`, or `AccountName=` in `connection_string`)."""
    from openlineage.client.naming.dataset import ABFSS, GCS, S3

    parts = urlsplit(uri)
    store = SCHEMES.get(parts.scheme.lower())
    key = parts.path.strip("/") or "/"
    if store == "s3":
        return _named(S3(bucket_name=parts.netloc, object_key=key))
    if store == "gcs":
        return _named(GCS(bucket_name=parts.netloc, object_key=key))
    if store == "azure":
        container, _, account = parts.netloc.partition("@")
        account = account.split(".", 1)[0] or _azure_account(options or {})
        return _named(ABFSS(container=container, service=account, path=key))
    return path_name(parts.path or uri)


def table_name(ref: TableRef) -> tuple[str, str]:
    """A table: by its location when its address is a path or URI, else by its catalog."""
    address = ref.address
    if is_uri(address):
        return uri_name(address, dict(ref.options))
    if ref.local:
        return path_name(address)
    catalog, _, table = address.partition("/")
    return f"{ref.format}://{catalog}", table


def _named(naming: object) -> tuple[str, str]:
    return naming.get_namespace(), naming.get_name()  # type: ignore[attr-defined]


def _azure_account(options: Mapping[str, str]) -> str:
    if options.get("account_name"):
        return options["account_name"]
    for part in options.get("connection_string", "").split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "accountname":
            return value.strip()
    return "unknown"


def place_schema(place: object) -> pa.Schema | None:
    """The Arrow schema of a SOURCE place as lineage shows it (Parquet files with their hive
    columns, or a table's current schema); None when it cannot be read (lineage then goes
    without a schema facet: a report never fails a run)."""
    import pyarrow.dataset as ds

    place = getattr(place, "place", place)
    try:
        if isinstance(place, TableRef):
            from bertetl.io.tables.registry import format_class

            return format_class(place.format)(place).schema(None)
        if isinstance(place, Location):
            path, filesystem = place.path, place.filesystem
        else:
            path, filesystem = os.fspath(place), None  # type: ignore[call-overload]
        dataset = ds.dataset(
            path,
            format="parquet",
            partitioning="hive",
            filesystem=filesystem,
            exclude_invalid_files=True,
            ignore_prefixes=[".", "_"],
        )
        return dataset.schema
    except (OSError, pa.ArrowException, ValueError, ImportError):
        return None
