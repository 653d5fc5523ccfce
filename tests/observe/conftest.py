"""Real components for the observe tests: Debian's Prometheus Pushgateway on loopback, and a
small OpenLineage HTTP receiver (http.server in a thread)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """The OpenLineage client writes `OPENLINEAGE__TRANSPORT__*` aliases of `OPENLINEAGE_URL`
    into `os.environ` (monkeypatch does not see them): every test here leaves the environment
    as it found it, so no later test of the worker emits lineage."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Pushgateway on a loopback port (skipped, saying why, without the package)."""
    if not Path(PUSHGATEWAY).exists():
        pytest.skip("prometheus-pushgateway not installed (make test installs it with apt-get)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("pushgateway") / "log").open("w")
    process = subprocess.Popen(
        [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the Pushgateway did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


class Receiver(ThreadingHTTPServer):
    """Keeps the JSON bodies POSTed to it as `events`, every body with its path as `bodies`."""

    events: list[dict[str, Any]]
    bodies: list[tuple[str, bytes]]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append((self.path, body))  # type: ignore[attr-defined]
        if "json" in self.headers.get("Content-Type", ""):
            self.server.events.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def lineage_receiver() -> Iterator[Receiver]:
    """An HTTP server on loopback that keeps the OpenLineage events posted to it."""
    server = Receiver(("127.0.0.1", 0), _Handler)
    server.events = []
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def read_metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The Pushgateway's /metrics, parsed by prometheus_client's own text parser:
    (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values
