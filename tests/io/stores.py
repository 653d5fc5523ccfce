"""The test object stores side by side: S3 (moto), GCS (fake-gcs-server) and Azure Blob
Storage (Azurite), each seen
through its own client library, as a user outside bertetl would see it (`Store`, made by the
`store` fixture in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bertetl.io.stores.locations import Location, parse_location


@dataclass(frozen=True)
class Store:
    """A fresh bucket on one test server: `uri(path)`, the storage options that reach it,
    and direct object access (put, get, list with versions) through the store's own SDK."""

    scheme: str  # "s3", "gs" or "abfs"
    endpoint: str  # the endpoint URL (for Azure: the connection string)
    bucket: str
    options: dict[str, str]

    def uri(self, path: str) -> str:
        return f"{self.scheme}://{self.bucket}/{path}"

    def location(self, path: str) -> Location:
        return parse_location(self.uri(path), self.options)

    def _s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def _gcs_bucket(self) -> Any:
        from tests.io import gcs_server

        return gcs_server.client(self.endpoint).bucket(self.bucket)

    def _container(self) -> Any:
        from tests.io import azure_server

        return azure_server.service(self.endpoint).get_container_client(self.bucket)

    def put(self, key: str, body: bytes) -> None:
        if self.scheme == "s3":
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=body)
        elif self.scheme == "gs":
            self._gcs_bucket().blob(key).upload_from_string(body)
        else:
            self._container().upload_blob(key, body, overwrite=True)

    def get(self, key: str) -> bytes:
        if self.scheme == "s3":
            return self._s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        if self.scheme == "gs":
            return self._gcs_bucket().blob(key).download_as_bytes()
        return self._container().download_blob(key).readall()

    def objects(self, prefix: str) -> dict[str, str]:
        """Object name (below `prefix`) -> its version (S3 ETag, GCS generation)."""
        prefix = prefix.rstrip("/") + "/"
        if self.scheme == "s3":
            listed = self._s3().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
            return {o["Key"][len(prefix) :]: o["ETag"] for o in listed.get("Contents", [])}
        if self.scheme == "gs":
            blobs = self._gcs_bucket().client.list_blobs(self.bucket, prefix=prefix)
            return {b.name[len(prefix) :]: str(b.generation) for b in blobs}
        listed = self._container().list_blobs(name_starts_with=prefix)
        return {b.name[len(prefix) :]: str(b.etag) for b in listed}


def objects(location: Location) -> dict[str, str]:
    """Object name (relative to `location`) -> version, listed by the store's own SDK."""
    options = dict(location.options)
    scheme = {"s3": "s3", "gcs": "gs", "azure": "abfs"}[location.store]
    endpoint = options.get("endpoint_url") or options["connection_string"]
    return Store(scheme, endpoint, location.bucket, options).objects(location.key)


def store_for(request: Any, scheme: str) -> Store:
    """A fresh bucket on the session's server of `scheme` ("s3", "gs", "abfs"), reached
    through the fixtures of `request` (its servers are session fixtures)."""
    from tests.io import azure_server, gcs_server, s3_server

    if scheme == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        return Store("s3", endpoint, s3_server.new_bucket(endpoint), {"endpoint_url": endpoint})
    if scheme == "gs":
        endpoint = request.getfixturevalue("gcs_endpoint")
        options = {"endpoint_url": endpoint, "anonymous": "true"}
        return Store("gs", endpoint, gcs_server.new_bucket(endpoint), options)
    connection = request.getfixturevalue("azure_connection")
    container = azure_server.new_container(connection)
    return Store("abfs", connection, container, {"connection_string": connection})
