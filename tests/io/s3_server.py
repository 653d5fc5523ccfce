"""One real S3-compatible server (moto's `ThreadedMotoServer`) on loopback per test session,
reached through the `s3_endpoint` session fixture in tests/conftest.py (which takes a
reference; the last one released stops it)."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

#: Credentials the server accepts (any); set in the environment, the standard chain.
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "bertetl-test",
    "AWS_SECRET_ACCESS_KEY": "bertetl-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

_state: dict[str, Any] = {"server": None, "users": 0, "saved": {}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def acquire() -> str:
    """Start the server (once) and set the credentials; returns its endpoint URL."""
    if _state["server"] is None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        _state["server"], _state["endpoint"] = server, f"http://127.0.0.1:{port}"
        _state["saved"] = {key: os.environ.get(key) for key in ENVIRONMENT}
        os.environ.update(ENVIRONMENT)
    _state["users"] += 1
    return str(_state["endpoint"])


def release() -> None:
    """Drop a reference; the last one stops the server and restores the environment."""
    _state["users"] -= 1
    if _state["users"] == 0 and _state["server"] is not None:
        _state["server"].stop()
        _state["server"] = None
        for key, value in _state["saved"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the server (created with boto3, as a user would)."""
    import boto3

    name = f"bertetl-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name
