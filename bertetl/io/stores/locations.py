"""Where SOURCE and DEST live: a local folder, or an object store (`s3://`, `gs://`, `abfs://`).

`parse_location(text, options)` turns what the user gave into a `Location`: the filesystem
(pyarrow's own S3 and GCS filesystems; fsspec's for the rest, e.g. `adlfs` for `abfs://`)
and the path on it. A plain path is a local `Location` (`filesystem` None), and every caller
keeps its local code exactly as it was; only a `Location` whose `local` is false takes the
object-store branches (`bertetl.io.stores.objects`).

`--storage-option KEY=VALUE` (repeatable) passes endpoint, region and the like
(`STORAGE_OPTIONS` lists the keys per store); credentials come from each store's standard
chain (for S3: the environment, the shared config/profile, the instance role), never from
bertetl. See docs/STORAGE.md.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
from typing_extensions import TypeIs

from bertetl.errors import InputError

#: DEST's lock: a file (`flock`) locally, an object (conditional create) on a store.
LOCK_NAME = ".bertetl.lock"
#: URI schemes and the store each names.
SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "abfs": "azure",
    "abfss": "azure",
    "az": "azure",
}
#: The extra that brings what a store needs beyond pyarrow (the lock's client, fsspec's
#: filesystem), and what it is.
EXTRAS = {
    "s3": ("s3", "boto3"),
    "gcs": ("gcs", "google-cloud-storage"),
    "azure": ("azure", "adlfs"),
}

#: `--storage-option` keys per store: ours -> the filesystem's keyword. Values are strings;
#: `_BOOL` and `_FLOAT` keys are converted.
STORAGE_OPTIONS: dict[str, dict[str, str]] = {
    "s3": {
        "endpoint_url": "endpoint_override",
        "endpoint_override": "endpoint_override",
        "region": "region",
        "region_name": "region",
        "access_key": "access_key",
        "aws_access_key_id": "access_key",
        "secret_key": "secret_key",
        "aws_secret_access_key": "secret_key",
        "session_token": "session_token",
        "aws_session_token": "session_token",
        "anonymous": "anonymous",
        "role_arn": "role_arn",
        "force_virtual_addressing": "force_virtual_addressing",
        "connect_timeout": "connect_timeout",
        "request_timeout": "request_timeout",
        "scheme": "scheme",
    },
    "gcs": {
        "endpoint_url": "endpoint_override",
        "endpoint_override": "endpoint_override",
        "project_id": "project_id",
        "anonymous": "anonymous",
        "scheme": "scheme",
    },
}
_BOOL = {"anonymous", "force_virtual_addressing"}
_FLOAT = {"connect_timeout", "request_timeout"}


class StorageError(InputError):
    """A location cannot be reached: unknown scheme, missing extra, bad option, bad
    credentials, missing bucket. The message names the URI and says what to do."""


def parse_storage_options(pairs: Iterable[str] | None) -> dict[str, str]:
    """`["endpoint_url=http://…", "region=eu-west-1"]` -> a dict; a pair without `=` is a
    `StorageError` naming it."""
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StorageError(f"--storage-option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


@dataclass(frozen=True)
class TableRef:
    """A table (Delta Lake, Iceberg, ...) as SOURCE or DEST (`bertetl.io.tables` reads and
    commits it). `format`: its URI scheme, a key of `bertetl.io.tables.registry.FORMATS`;
    `address`: what follows `SCHEME://` as its format reads it (for Delta the table's path or
    URI, `/data/t`, `s3://bucket/t`; for Iceberg `CATALOG/NAMESPACE.TABLE`). `options`: the
    storage options it was given."""

    format: str
    uri: str
    address: str
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return self.uri

    @property
    def local(self) -> bool:
        """A table in a local folder (its lock is a local `flock`), as its format says."""
        from bertetl.io.tables.registry import format_class

        return bool(format_class(self.format).is_local(self.address))


def table_uri_parts(text: str) -> tuple[str, str]:
    """`SCHEME://REST` as its lower-case scheme and REST without trailing slashes."""
    scheme, rest = text.split("://", 1)
    return scheme.lower(), rest.rstrip("/")


def is_table_uri(text: object) -> bool:
    """Whether `text` names a table: `SCHEME://...` of a registered table format
    (`bertetl.io.tables.registry.FORMATS`: `delta://...`, `iceberg://...`)."""
    from bertetl.io.tables.registry import FORMATS

    return isinstance(text, str) and "://" in text and table_uri_parts(text)[0] in FORMATS


def parse_table(text: str, options: Mapping[str, str] | None = None) -> TableRef:
    """A table URI as a `TableRef`, parsed by the format its scheme names
    (`delta:///data/t`, `delta://s3://bucket/t`, `iceberg://CATALOG/NAMESPACE.TABLE`); a
    `StorageError` naming the expected form otherwise."""
    from bertetl.io.tables.registry import FORMATS, format_class

    if not is_table_uri(text):
        known = ", ".join(f"{scheme}://" for scheme in FORMATS)
        raise StorageError(f"{text}: expected a table URI ({known})")
    ref: TableRef = format_class(table_uri_parts(text)[0]).parse(
        text, tuple(sorted((options or {}).items()))
    )
    return ref


def is_table(location: object) -> TypeIs[TableRef]:
    """Whether a resolved SOURCE or DEST is a table (`TableRef`) rather than a folder."""
    return isinstance(location, TableRef)


def is_uri(text: str | os.PathLike[str]) -> bool:
    """Whether `text` names an object store (`scheme://...`) rather than a local path."""
    if not isinstance(text, str):
        return False
    scheme = urlsplit(text).scheme
    return "://" in text and len(scheme) > 1 and scheme != "file"


@dataclass(frozen=True)
class Location:
    """A place on a filesystem: `uri` to show users, `path` on `filesystem` (None: the
    local filesystem, `path` an OS path). `options` are the storage options it was opened
    with (the lock's client needs them too)."""

    uri: str
    path: str
    filesystem: pafs.FileSystem | None = field(default=None, compare=False, repr=False)
    store: str = "local"
    options: tuple[tuple[str, str], ...] = ()

    @property
    def local(self) -> bool:
        """True for a local path: the staged-swap commit, `flock` and `os` calls apply."""
        return self.filesystem is None

    @property
    def fs(self) -> pafs.FileSystem:
        """The filesystem (pyarrow's local one for a local path)."""
        return self.filesystem if self.filesystem is not None else pafs.LocalFileSystem()

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/")) if not self.local else Path(self.path).name

    @property
    def bucket(self) -> str:
        """The bucket (container) of an object-store location."""
        return self.path.split("/", 1)[0]

    @property
    def key(self) -> str:
        """The path inside the bucket (empty at its root)."""
        return self.path.split("/", 1)[1] if "/" in self.path else ""

    @property
    def parent(self) -> Location:
        if self.local:
            return self._with(str(Path(self.path).parent))
        return self._with(posixpath.dirname(self.path.rstrip("/")))

    def __truediv__(self, relative: str) -> Location:
        if self.local:
            return self._with(str(Path(self.path) / relative))
        return self._with(posixpath.join(self.path.rstrip("/"), relative).rstrip("/"))

    def relative_to(self, other: Location) -> str:
        """This location's path below `other` (a `StorageError` when it is not below it)."""
        base = other.path.rstrip("/") + "/"
        if not self.path.startswith(base):
            raise StorageError(f"{self.uri} is not inside {other.uri}")
        return self.path[len(base) :]

    def is_relative_to(self, other: Location) -> bool:
        """Whether this location is `other` or lies below it (same store)."""
        if self.store != other.store:
            return False
        here, there = self.path.rstrip("/"), other.path.rstrip("/")
        return here == there or here.startswith(there + "/")

    def _with(self, path: str) -> Location:
        uri = path if self.local else f"{self.uri.split('://', 1)[0]}://{path}"
        return Location(uri, path, self.filesystem, self.store, self.options)

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """A local location is an OS path; an object-store one is not, and says so."""
        if not self.local:
            raise TypeError(f"{self.uri} is not a local path")
        return self.path

    # -- object-level helpers (any store) ---------------------------------------------------

    def info(self) -> pafs.FileInfo:
        """One `get_file_info`; store errors (credentials, network) as `StorageError`."""
        try:
            return self.fs.get_file_info(self.path)
        except (OSError, pa.ArrowException) as e:
            raise storage_error(self, "cannot reach", e) from e

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A folder, or on an object store a prefix with objects below it."""
        return self.info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def open_input_file(self) -> pa.NativeFile:
        """A random-access file (ranged reads on object stores)."""
        return self.fs.open_input_file(self.path)


#: What to check when a store refuses or cannot be reached, by store (`storage_error`).
CHECK = {
    "s3": "the credentials (environment, profile or instance role) and --storage-option "
    "(e.g. endpoint_url, region)",
    "gcs": "the credentials (Application Default Credentials) and --storage-option "
    "(e.g. endpoint_url, project_id)",
    "azure": "the credentials (connection string, account key, SAS or DefaultAzureCredential) "
    "and --storage-option (e.g. account_name, connection_string)",
}


def storage_error(location: Location | str, doing: str, error: BaseException) -> StorageError:
    """`error` from a store as one line naming the URI, with what to check."""
    uri = location.uri if isinstance(location, Location) else location
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    store = SCHEMES.get(uri.split("://", 1)[0].lower(), "s3") if "://" in uri else "s3"
    return StorageError(f"{doing} {uri}: {text}; check the bucket, {CHECK.get(store, CHECK['s3'])}")


def _convert(key: str, value: str) -> Any:
    if key in _BOOL:
        return value.lower() in ("1", "true", "yes", "on")
    if key in _FLOAT:
        try:
            return float(value)
        except ValueError as e:
            raise StorageError(f"--storage-option {key}={value}: expected a number") from e
    return value


def filesystem_options(store: str, options: Mapping[str, str], uri: str) -> dict[str, Any]:
    """The filesystem's keywords for `options` (endpoint URLs split into host and scheme);
    an unknown key is a `StorageError` listing the known ones."""
    known = STORAGE_OPTIONS.get(store)
    if known is None:
        return dict(options)  # fsspec filesystems take their own keywords
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            raise StorageError(
                f"--storage-option {key} is not an option of {uri}; known: {', '.join(known)}"
            )
        name = known[key]
        if name == "endpoint_override" and "://" in value:
            parts = urlsplit(value)
            kwargs.setdefault("scheme", parts.scheme)
            value = parts.netloc + parts.path.rstrip("/")
        kwargs[name] = _convert(name, value)
    return kwargs


def _filesystem(store: str, scheme: str, options: Mapping[str, str], uri: str) -> pafs.FileSystem:
    if store == "s3" and not {"endpoint_url", "endpoint_override"} & set(options):
        # the AWS SDKs' standard endpoint variables, which boto3 and deltalake read too
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options = {**options, "endpoint_url": endpoint}
    kwargs = filesystem_options(store, options, uri)
    try:
        if store == "s3":
            return pafs.S3FileSystem(**kwargs)
        if store == "gcs":
            return pafs.GcsFileSystem(**kwargs)
    except (OSError, pa.ArrowException, TypeError, ValueError) as e:
        raise storage_error(uri, "cannot open", e) from e
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    try:
        implementation = fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        extra, package = EXTRAS.get(store, (store, "its fsspec filesystem"))
        raise StorageError(f"{uri} needs {package}: pip install 'bertetl[{extra}]' ({e})") from e
    except ValueError as e:  # fsspec: "Protocol not known"
        raise StorageError(
            f"{uri}: unsupported storage scheme {scheme!r}; use a local path, s3://, gs:// or "
            "abfs://"
        ) from e
    try:
        fs = implementation(**kwargs)
    except (OSError, TypeError, ValueError) as e:  # e.g. adlfs without an account
        raise storage_error(uri, "cannot open", e) from e
    return PyFileSystem(FSSpecHandler(fs))


def parse_location(
    text: str | os.PathLike[str] | Location, options: Mapping[str, str] | None = None
) -> Location:
    """A `Location` for a local path (returned as given, `filesystem` None) or a URI
    (`s3://bucket/prefix`), opened with `options` (`--storage-option`). Storage options with
    a local path are refused: they would be silently ignored."""
    if isinstance(text, Location):
        return text
    options = dict(options or {})
    if not is_uri(text):
        if options:
            raise StorageError(
                f"--storage-option is for object-store URIs (s3://...); {os.fspath(text)} is a "
                "local path"
            )
        return Location(os.fspath(text), os.fspath(text))
    assert isinstance(text, str)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    store = SCHEMES.get(scheme, scheme)
    path = rest.rstrip("/")
    if not path or path.startswith("/"):
        raise StorageError(f"{text}: expected {scheme}://BUCKET/PATH")
    filesystem = _filesystem(store, scheme, options, text)
    return Location(f"{scheme}://{path}", path, filesystem, store, tuple(sorted(options.items())))


def resolve(
    text: str | os.PathLike[str] | Location | TableRef, options: Mapping[str, str] | None = None
) -> Any:
    """A URI as a `Location` opened with `options`; a local path as given (so local code
    stays as it was). Options are checked for the URIs among a run's paths
    (`check_options_used`). A table URI (`delta://`, `iceberg://`) is a `TableRef`; a
    PostgreSQL URI a `bertetl.io.stores.pgref.PostgresRef`."""
    from bertetl.io.stores.pgref import PostgresRef, is_postgres_uri, parse_postgres

    if isinstance(text, TableRef | PostgresRef):
        return text
    if is_postgres_uri(text):
        assert isinstance(text, str)
        return parse_postgres(text)
    if is_table_uri(text):
        assert isinstance(text, str)
        return parse_table(text, options)
    if isinstance(text, Location) or not is_uri(text):
        return text
    return parse_location(text, options)


def resolve_run(
    source: str | os.PathLike[str] | Location | TableRef,
    dest: str | os.PathLike[str] | Location | TableRef,
    options: Mapping[str, str] | None = None,
) -> tuple[Any, Any]:
    """SOURCE and DEST through `resolve`; storage options with neither on an object store
    are refused (they would be ignored without a word)."""
    if options and not (_takes_options(source) or _takes_options(dest)):
        raise StorageError(
            f"--storage-option is for object-store URIs (s3://...); {source} and "
            f"{dest} are local paths"
        )
    return resolve(source, options), resolve(dest, options)


def _takes_options(text: object) -> bool:
    """Whether storage options apply to `text`: an object-store URI, a Delta table on one, an
    Iceberg table (its catalog's properties)."""
    from bertetl.io.stores.pgref import PostgresRef, is_postgres_uri

    if isinstance(text, TableRef):
        return not text.local
    if isinstance(text, PostgresRef) or is_postgres_uri(text):
        return False  # its connection string says everything
    if is_table_uri(text):
        assert isinstance(text, str)
        return not parse_table(text).local
    return is_uri(text) or is_remote(text)  # type: ignore[arg-type]


def is_remote(location: object) -> bool:
    """Whether `location` is an object-store `Location` (anything else is a local path)."""
    return isinstance(location, Location) and not location.local


def as_local(location: str | os.PathLike[str] | Location) -> str:
    """A local location's OS path; an object-store one is a `StorageError` (for the code
    that has no object-store branch yet)."""
    if isinstance(location, Location):
        if not location.local:
            raise StorageError(f"{location.uri}: this command reads and writes local paths only")
        return location.path
    return os.fspath(location)
