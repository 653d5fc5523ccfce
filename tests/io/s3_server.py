"""One real S3-compatible server (moto's server, `python -m moto.server`) on loopback per test
session, reached through the `s3_endpoint` session fixture in tests/conftest.py.

The server runs in its own process, not in a thread of the test process: a client library
that holds the GIL while it waits for an HTTP answer (deltalake's log listing does) would
otherwise wait forever on a server that needs that GIL to answer.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.io.servers import free_port, serving

#: Credentials the server accepts (any); set in the environment, the standard chain.
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "bertetl-test",
    "AWS_SECRET_ACCESS_KEY": "bertetl-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def running() -> Iterator[str]:
    """Start the server with the credentials in the environment; yields its endpoint URL,
    then stops it and restores the environment."""

    def start(port: int) -> tuple[list[str], str]:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        return command, f"http://127.0.0.1:{port}"

    saved = {key: os.environ.get(key) for key in ENVIRONMENT}
    os.environ.update(ENVIRONMENT)
    try:
        with serving(start, "the S3 server") as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dead_endpoint() -> str:
    """An endpoint URL on a loopback port nothing listens on (a store that is down)."""
    return f"http://127.0.0.1:{free_port()}"


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the server (created with boto3, as a user would)."""
    import boto3

    name = f"bertetl-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name
