"""The test servers' starter: a port taken between choosing it and binding it is retried."""

from __future__ import annotations

import socket
import sys

import httpx
import pytest

from tests.io import servers


def test_a_server_whose_port_was_taken_starts_on_another(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        real = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real())
        tried = []

        def start(port: int) -> tuple[list[str], str]:
            tried.append(port)
            command = [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)]
            return command, f"http://127.0.0.1:{port}/"

        with servers.serving(start, "a web server") as port:
            assert tried == [busy, port] and port != busy
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
