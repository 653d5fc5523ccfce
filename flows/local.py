"""Prefect's local mode for the CLI: a temporary API server that never outlives the run.

Prefect starts a temporary server process when no `PREFECT_API_URL` is set, but if the run is
SIGKILLed (or OOM-killed), that server is orphaned and keeps running. Here the CLI starts it
itself, with a small watchdog process that stops it as soon as the CLI process is gone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import ClassVar

#: Runs as a child of the CLI: when the CLI dies, this is re-parented, and it stops the server.
WATCHDOG = """
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
while os.getppid() == parent and alive(server):
    time.sleep(0.5)
if alive(server):
    os.kill(server, signal.SIGTERM)
    for _ in range(50):
        if not alive(server):
            break
        time.sleep(0.1)
    else:
        os.kill(server, signal.SIGKILL)
"""


def _watch(server_pid: int) -> subprocess.Popen:
    """A child process that stops `server_pid` once this process is gone."""
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(server_pid)])


@contextlib.contextmanager
def local_api() -> Iterator[None]:
    """Without `PREFECT_API_URL`, run the block against a temporary server for this process
    (stopped on exit; stopped by a watchdog if this process is killed). With it, do nothing."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    watchdogs: list[subprocess.Popen] = []

    class WatchedServer(SubprocessASGIServer):
        _instances: ClassVar[dict] = {}  # not Prefect's own shared instances

        def _run_uvicorn_command(self) -> subprocess.Popen:
            # the watchdog starts the moment the server process exists, before the server
            # is even healthy, so a kill during startup leaves nothing behind either
            process = super()._run_uvicorn_command()
            watchdogs.append(_watch(process.pid))
            return process

    server = WatchedServer()
    try:
        server.start()
        assert server.server_process is not None
        if not watchdogs:  # a Prefect without that hook: watch from here on
            watchdogs.append(_watch(server.server_process.pid))
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.logging.handlers import APILogHandler

        if server.running:
            APILogHandler().flush()  # send the run's last log lines before the server goes
        server.stop()
        for watchdog in watchdogs:
            try:
                watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                watchdog.kill()
