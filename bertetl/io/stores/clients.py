"""The object-level calls bertetl writes with, one client per store: S3 through boto3,
Google Cloud Storage through google-cloud-storage, Azure Blob Storage through
azure-storage-blob. Reads go through pyarrow's filesystems
(`bertetl.io.stores.locations`); these clients do what a filesystem cannot: a whole-object upload,
and conditional writes and deletes for the DEST lock (`bertetl.io.stores.objects`).

Each store names an object's version its own way (S3 and Azure an ETag, GCS a generation);
here it is an opaque `version` string. The conditional calls are the same on every store:

| call | S3 | GCS | Azure |
|---|---|---|---|
| create if absent | `PutObject(IfNoneMatch='*')` | `ifGenerationMatch=0` | `If-None-Match: *` |
| replace this version | `PutObject(IfMatch=etag)` | `ifGenerationMatch=gen` | `If-Match: etag` |
| delete this version | `DeleteObject(IfMatch=etag)` | `ifGenerationMatch=gen` | `If-Match: etag` |

Credentials come from each store's standard chain (AWS: environment, profile, instance role;
Google: Application Default Credentials; Azure: a key, SAS or connection string given as a
storage option, else `DefaultAzureCredential`); `--storage-option` passes the endpoint and the like.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from bertetl.errors import CommitError
from bertetl.io.stores.locations import EXTRAS, Location, StorageError, storage_error

#: GCS calls give up on transient errors (an unreachable endpoint) after this long.
GCS_RETRY_SECONDS = 60.0


class ObjectClient(Protocol):
    """What bertetl needs of a store to write DEST there (see the module's table)."""

    def check_bucket(self, location: Location) -> None:
        """`StorageError` naming the URI when the bucket is missing or cannot be written."""

    def upload_file(self, local: Path, target: Location) -> None:
        """Upload `local` whole (never visible half-written); `CommitError` on a failure."""

    def put(
        self, target: Location, data: bytes, *, if_absent: bool = False, if_version: str = ""
    ) -> str | None:
        """Write a small object, only if absent or only over `if_version` when asked; its new
        version, or None when that condition failed."""

    def get(self, target: Location) -> tuple[bytes, str] | None:
        """A small object's bytes and version, or None when it does not exist."""

    def delete(self, target: Location, *, if_version: str = "") -> bool:
        """Delete an object (only `if_version`, when given); False when that condition
        failed. A missing object is not an error."""


def client(location: Location) -> ObjectClient:
    """The client for `location`'s store and storage options (cached); a store bertetl cannot
    write, or a missing package, is a `StorageError` naming the URI."""
    factory = _CLIENTS.get(location.store)
    if factory is None:
        raise StorageError(
            f"DEST {location.uri}: bertetl writes object storage on s3://, gs:// and abfs:// "
            f"(its lock needs a conditional create); {location.store} can be a SOURCE; write to "
            "one of those or a local folder"
        )
    options = location.options
    account = azure_account(location)
    if account and not {"account_name", "connection_string"} & set(dict(options)):
        options = tuple(sorted((*options, ("account_name", account))))
    try:
        return factory(options)
    except ValueError as e:  # options that cannot make a client
        raise StorageError(f"DEST {location.uri} {e}") from e
    except ImportError as e:
        extra, package = EXTRAS[location.store]
        raise StorageError(
            f"writing {location.uri} needs {package}: pip install 'bertetl[{extra}]'"
        ) from e


def azure_account(location: Location) -> str | None:
    """The account of an ADLS Gen2 URI `abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/...`
    (None for `abfs://CONTAINER/...`, whose account comes from the options)."""
    if location.store != "azure" or "@" not in location.bucket:
        return None
    return location.bucket.split("@", 1)[1].split(".", 1)[0] or None


def _container(location: Location) -> str:
    """The container of an Azure location (`CONTAINER` of `CONTAINER@ACCOUNT.host`)."""
    return location.bucket.split("@", 1)[0]


# -- S3 ----------------------------------------------------------------------------------------

_BOTO_NAMES = {
    "endpoint_url": "endpoint_url",
    "endpoint_override": "endpoint_url",
    "region": "region_name",
    "region_name": "region_name",
    "access_key": "aws_access_key_id",
    "aws_access_key_id": "aws_access_key_id",
    "secret_key": "aws_secret_access_key",
    "aws_secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "aws_session_token": "aws_session_token",
}
_PRECONDITION = ("PreconditionFailed", "412", "ConditionalRequestConflict")


def _truthy(options: dict[str, str], key: str) -> bool:
    return options.get(key, "").lower() in ("1", "true", "yes", "on")


def _error_code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Objects:
    """S3 (and S3-compatible servers) through boto3 (the `s3` extra)."""

    def __init__(self, options: tuple[tuple[str, str], ...]) -> None:
        import boto3
        from botocore.config import Config

        kwargs: dict[str, Any] = {}
        scheme = dict(options).get("scheme", "https")  # as pyarrow's reads take it
        for key, value in options:
            name = _BOTO_NAMES.get(key)
            if name == "endpoint_url" and "://" not in value:
                value = f"{scheme}://{value}"
            if name:
                kwargs[name] = value
        if _truthy(dict(options), "anonymous"):
            from botocore import UNSIGNED

            kwargs["config"] = Config(signature_version=UNSIGNED)
        self.s3 = boto3.session.Session().client("s3", **kwargs)

    def _call(self, target: Location, doing: str, call: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(Bucket=target.bucket, **kwargs)
        except (ClientError, BotoCoreError) as e:
            raise CommitError(str(storage_error(target, doing, e))) from e

    def check_bucket(self, location: Location) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.head_bucket(Bucket=location.bucket)
        except ClientError as e:
            if _error_code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise _missing_bucket(location) from e
            raise storage_error(location, "cannot write", e) from e
        except BotoCoreError as e:
            raise storage_error(location, "cannot reach", e) from e

    def upload_file(self, local: Path, target: Location) -> None:
        """One PUT, or a multipart upload completed only when every part is in (and aborted
        by boto3's transfer manager on a failure); then the size S3 reports is checked."""
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.upload_file(
                str(local), target.bucket, target.key, Config=TransferConfig(use_threads=False)
            )
            size = self.s3.head_object(Bucket=target.bucket, Key=target.key)["ContentLength"]
        except (ClientError, BotoCoreError, OSError) as e:
            raise CommitError(str(storage_error(target, "cannot upload", e))) from e
        _check_size(target, local, size)

    def put(
        self, target: Location, data: bytes, *, if_absent: bool = False, if_version: str = ""
    ) -> str | None:
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if if_absent else {}
        if if_version:
            condition["IfMatch"] = if_version
        try:
            response = self._call(
                target, "cannot write", self.s3.put_object, Key=target.key, Body=data, **condition
            )
        except CommitError as e:
            cause = e.__cause__
            if condition and isinstance(cause, ClientError):
                if _error_code(cause) in _PRECONDITION:
                    return None
                if _error_code(cause) in ("NotImplemented", "501"):
                    raise CommitError(
                        f"{target.uri}: the store does not support conditional writes, so "
                        "bertetl cannot lock it; refusing to write"
                    ) from cause
            raise
        return str(response["ETag"])

    def get(self, target: Location) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            response = self._call(target, "cannot read", self.s3.get_object, Key=target.key)
        except CommitError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read(), str(response["ETag"])

    def delete(self, target: Location, *, if_version: str = "") -> bool:
        from botocore.exceptions import ClientError

        condition = {"IfMatch": if_version} if if_version else {}
        try:
            self._call(target, "cannot delete", self.s3.delete_object, Key=target.key, **condition)
        except CommitError as e:
            cause = e.__cause__
            if condition and isinstance(cause, ClientError) and _error_code(cause) in _PRECONDITION:
                return False
            raise
        return True


# -- Google Cloud Storage ---------------------------------------------------------------------


class GcsObjects:
    """Google Cloud Storage through google-cloud-storage (the `gcs` extra). Storage options:
    `endpoint_url` (an emulator or private endpoint), `project_id`, `anonymous`."""

    def __init__(self, options: tuple[tuple[str, str], ...]) -> None:
        from google.api_core.retry import Retry
        from google.cloud.storage.retry import DEFAULT_RETRY

        given = dict(options)
        kwargs: dict[str, Any] = {"project": given.get("project_id") or None}
        endpoint = given.get("endpoint_url") or given.get("endpoint_override")
        if endpoint:
            scheme = given.get("scheme", "https")
            url = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
            kwargs["client_options"] = {"api_endpoint": url}
        if _truthy(given, "anonymous"):
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()
            kwargs["project"] = kwargs["project"] or "anonymous"
        self._kwargs = kwargs
        self._storage: Any = None
        self.retry: Retry = DEFAULT_RETRY.with_timeout(GCS_RETRY_SECONDS)

    @property
    def storage(self) -> Any:
        """The google-cloud-storage client, made on first use (credentials are looked up
        then, so an error names the URI being written)."""
        if self._storage is None:
            from google.cloud import storage

            self._storage = storage.Client(**self._kwargs)
        return self._storage

    def _blob(self, target: Location) -> Any:
        return self.storage.bucket(target.bucket).blob(target.key)

    def _errors(self) -> tuple[type[BaseException], ...]:
        import requests
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError

        return (GoogleAPIError, GoogleAuthError, requests.RequestException)

    def check_bucket(self, location: Location) -> None:
        try:
            exists = self.storage.bucket(location.bucket).exists(retry=self.retry)
        except self._errors() as e:
            raise storage_error(location, "cannot reach", e) from e
        if not exists:
            raise _missing_bucket(location)

    def upload_file(self, local: Path, target: Location) -> None:
        """One multipart upload, or above 8 MiB a resumable upload that GCS makes visible
        only once finalized; then the size GCS reports is checked."""
        blob = self._blob(target)
        errors: tuple[type[BaseException], ...] = (*self._errors(), OSError)
        try:
            blob.upload_from_filename(str(local), retry=self.retry)
            blob.reload(retry=self.retry)
        except errors as e:
            raise CommitError(str(storage_error(target, "cannot upload", e))) from e
        _check_size(target, local, blob.size)

    def put(
        self, target: Location, data: bytes, *, if_absent: bool = False, if_version: str = ""
    ) -> str | None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._blob(target)
        match = 0 if if_absent else int(if_version) if if_version else None
        try:
            blob.upload_from_string(data, if_generation_match=match, retry=self.retry)
        except PreconditionFailed:
            return None
        except self._errors() as e:
            raise CommitError(str(storage_error(target, "cannot write", e))) from e
        return str(blob.generation)

    def get(self, target: Location) -> tuple[bytes, str] | None:
        from google.api_core.exceptions import NotFound

        try:
            blob = self._blob(target)
            data = blob.download_as_bytes(retry=self.retry)
            if blob.generation is None:  # no generation header on the download: ask for it
                blob.reload(retry=self.retry)
        except NotFound:
            return None
        except self._errors() as e:
            raise CommitError(str(storage_error(target, "cannot read", e))) from e
        return data, str(blob.generation)

    def delete(self, target: Location, *, if_version: str = "") -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        match = int(if_version) if if_version else None
        return _delete(
            target,
            lambda: self._blob(target).delete(if_generation_match=match, retry=self.retry),
            missing=NotFound,
            refused=PreconditionFailed,
            errors=self._errors(),
        )


# -- Azure Blob Storage ------------------------------------------------------------------------


class AzureObjects:
    """Azure Blob Storage (and ADLS Gen2) through azure-storage-blob (the `azure` extra).
    Credentials as adlfs takes them for reading (each option, else its `AZURE_STORAGE_*`
    variable): `connection_string`, or `account_name` with `account_key`, `sas_token`, a
    service principal (`client_id`, `client_secret`, `tenant_id`) or none of them (then
    azure-identity's `DefaultAzureCredential`: managed identity, Azure CLI, ...), and
    `account_host` for a private endpoint."""

    def __init__(self, options: tuple[tuple[str, str], ...]) -> None:
        from azure.storage.blob import BlobServiceClient

        def option(key: str) -> str | None:  # as adlfs reads it: the option, else AZURE_STORAGE_*
            return given.get(key) or os.environ.get(f"AZURE_STORAGE_{key.upper()}") or None

        given = dict(options)
        connection = option("connection_string")
        if connection:
            self.service = BlobServiceClient.from_connection_string(connection)
            return
        account = option("account_name")
        if not account:
            raise ValueError("needs --storage-option account_name=... (or connection_string)")
        host = given.get("account_host") or f"{account}.blob.core.windows.net"
        credential: Any = option("account_key") or option("sas_token")
        if credential is None and not _truthy(given, "anon"):
            client_id, secret, tenant = (
                option(k) for k in ("client_id", "client_secret", "tenant_id")
            )
            if client_id and secret and tenant:
                from azure.identity import ClientSecretCredential

                credential = ClientSecretCredential(tenant, client_id, secret)
            else:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
        self.service = BlobServiceClient(f"https://{host}", credential=credential)

    def _blob(self, target: Location) -> Any:
        return self.service.get_blob_client(_container(target), target.key)

    def _errors(self) -> tuple[type[BaseException], ...]:
        from azure.core.exceptions import AzureError

        return (AzureError,)

    def check_bucket(self, location: Location) -> None:
        try:
            exists = self.service.get_container_client(_container(location)).exists()
        except self._errors() as e:
            raise storage_error(location, "cannot reach", e) from e
        if not exists:
            raise _missing_bucket(location)

    def upload_file(self, local: Path, target: Location) -> None:
        """One Put Blob, or staged blocks that become the blob only when the block list is
        committed; then the size Azure reports is checked."""
        blob = self._blob(target)
        errors: tuple[type[BaseException], ...] = (*self._errors(), OSError)
        try:
            with local.open("rb") as data:
                blob.upload_blob(data, overwrite=True)
            size = blob.get_blob_properties().size
        except errors as e:
            raise CommitError(str(storage_error(target, "cannot upload", e))) from e
        _check_size(target, local, size)

    def put(
        self, target: Location, data: bytes, *, if_absent: bool = False, if_version: str = ""
    ) -> str | None:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        condition = {"overwrite": not if_absent, **_if_match(if_version)}
        try:
            response = self._blob(target).upload_blob(data, **condition)
        except ResourceExistsError as e:  # any 409: only BlobAlreadyExists is our condition
            if if_absent and getattr(e, "error_code", None) == "BlobAlreadyExists":
                return None
            raise CommitError(str(storage_error(target, "cannot write", e))) from e
        except ResourceModifiedError as e:
            if if_version:
                return None
            raise CommitError(str(storage_error(target, "cannot write", e))) from e
        except self._errors() as e:
            raise CommitError(str(storage_error(target, "cannot write", e))) from e
        return str(response["etag"])

    def get(self, target: Location) -> tuple[bytes, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            download = self._blob(target).download_blob()
            return download.readall(), str(download.properties.etag)
        except ResourceNotFoundError:
            return None
        except self._errors() as e:
            raise CommitError(str(storage_error(target, "cannot read", e))) from e

    def delete(self, target: Location, *, if_version: str = "") -> bool:
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        return _delete(
            target,
            lambda: self._blob(target).delete_blob(**_if_match(if_version)),
            missing=ResourceNotFoundError,
            refused=ResourceModifiedError,
            errors=self._errors(),
        )


def _if_match(version: str) -> dict[str, Any]:
    """Azure's keywords for "only this version" (`If-Match: etag`); none without a version."""
    if not version:
        return {}
    from azure.core import MatchConditions

    return {"etag": version, "match_condition": MatchConditions.IfNotModified}


def _delete(
    target: Location,
    call: Any,
    *,
    missing: type[BaseException],
    refused: type[BaseException],
    errors: tuple[type[BaseException], ...],
) -> bool:
    """Run one store's delete call: an object already gone counts as deleted, a refused
    condition is False, any other store error a `CommitError` naming the URI."""
    try:
        call()
    except missing:
        return True
    except refused:
        return False
    except errors as e:
        raise CommitError(str(storage_error(target, "cannot delete", e))) from e
    return True


def _missing_bucket(location: Location) -> StorageError:
    return StorageError(
        f"DEST {location.uri}: bucket {location.bucket!r} does not exist; create it "
        "or fix the URI (and --storage-option endpoint_url)"
    )


def _check_size(target: Location, local: Path, size: int | None) -> None:
    if size != local.stat().st_size:
        raise CommitError(f"{target.uri}: uploaded {size} bytes of {local.stat().st_size}")


_CLIENTS: dict[str, Any] = {
    "s3": cache(S3Objects),
    "gcs": cache(GcsObjects),
    "azure": cache(AzureObjects),
}
