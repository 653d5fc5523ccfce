"""Starting a test server (S3, GCS, Azure emulators) on a free loopback port: one way to
start it, wait until it answers and stop it, shared by `s3_server`, `gcs_server` and
`azure_server`."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: How long a server may take to answer its first request.
START_SECONDS = 60


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: How many ports to try: another process can take a free port before the server binds it.
ATTEMPTS = 3


@contextmanager
def serving(start: Callable[[int], tuple[list[str], str]], name: str) -> Iterator[int]:
    """Run the command `start(port)` returns for a free port (its output in a log shown if
    it fails to start; its working folder a fresh temp folder) until the probe URL it returns
    gets an HTTP answer (any status: the server is up) from it, yield the port, then kill it.
    A server that could not bind its port (taken in between) is started on another."""
    for attempt in range(1, ATTEMPTS + 1):
        port = free_port()
        command, probe = start(port)
        with _running(command, probe, name) as server:
            if server is None and attempt < ATTEMPTS:  # the port was taken: another one
                continue
            assert server is not None, f"{name} found its port in use {ATTEMPTS} times"
            yield port
            return


@contextmanager
def _running(command: list[str], probe: str, name: str) -> Iterator[subprocess.Popen | None]:
    """The server up and answering, or None when it exited saying its address is in use."""
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
                    text = log.read_text(errors="replace")
                    if "in use" in text.lower() or "EADDRINUSE" in text:
                        yield None
                        return
                    raise AssertionError(f"{name} exited ({server.returncode}): {text}")
                try:
                    httpx.get(probe, timeout=2)
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, f"{name} did not start in {START_SECONDS} s"
                    time.sleep(0.1)
                    continue
                if server.poll() is None:  # the answer was ours, not another server's
                    break
            yield server
        finally:
            server.kill()
            server.wait()
