"""Fixtures for object-store tests: a real S3-compatible server on loopback (moto)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.io import s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The session's S3 server (`tests/io/s3_server.py`), its endpoint URL."""
    yield s3_server.acquire()
    s3_server.release()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.new_bucket(s3_endpoint)


@pytest.fixture
def storage(s3_endpoint: str) -> dict[str, str]:
    """The storage options that reach the server: what `--storage-option` passes."""
    return {"endpoint_url": s3_endpoint}
