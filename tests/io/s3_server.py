"""One real S3-compatible server (moto's server, `python -m moto.server`) on loopback per test
session, reached through the `s3_endpoint` session fixture in tests/conftest.py.

The server runs in its own process, not in a thread of the test process: a client library
that holds the GIL while it waits for an HTTP answer (deltalake's log listing does) would
otherwise wait forever on a server that needs that GIL to answer.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

#: Credentials the server accepts (any); set in the environment, the standard chain.
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "bertetl-test",
    "AWS_SECRET_ACCESS_KEY": "bertetl-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running() -> Iterator[str]:
    """Start the server with the credentials in the environment; yields its endpoint URL,
    then stops it and restores the environment."""
    import httpx

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    saved = {key: os.environ.get(key) for key in ENVIRONMENT}
    os.environ.update(ENVIRONMENT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"the S3 server exited ({server.returncode})"
            try:
                httpx.get(endpoint, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the S3 server did not start in 60 s"
                time.sleep(0.1)
        yield endpoint
    finally:
        server.kill()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dead_endpoint() -> str:
    """An endpoint URL on a loopback port nothing listens on (a store that is down)."""
    return f"http://127.0.0.1:{_free_port()}"


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the server (created with boto3, as a user would)."""
    import boto3

    name = f"bertetl-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name
