"""Starting a test server (S3, GCS, Azure emulators) on a free loopback port: one way to
start it, wait until it answers and stop it, shared by `s3_server`, `gcs_server` and
`azure_server`."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: How long a server may take to answer its first request.
START_SECONDS = 60


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(command: list[str], probe: str, name: str) -> Iterator[subprocess.Popen]:
    """Run `command` (its output in a log shown if it fails to start; its working folder a
    fresh temp folder) until `probe` gets an HTTP answer (any status: the server is up), yield
    the process, then kill it."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="bertetl-server-") as folder:
        log = Path(folder) / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder
            )
        try:
            deadline = time.monotonic() + START_SECONDS
            while True:
                if server.poll() is not None:
                    raise AssertionError(f"{name} exited ({server.returncode}): {log.read_text()}")
                try:
                    httpx.get(probe, timeout=2)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, f"{name} did not start in {START_SECONDS} s"
                    time.sleep(0.1)
            yield server
        finally:
            server.kill()
            server.wait()
