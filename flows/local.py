"""Prefect's local mode for the CLI: a temporary API server that never outlives the run.

Prefect starts a temporary server process when no `PREFECT_API_URL` is set, but if the run is
SIGKILLed (or OOM-killed), that server is orphaned and keeps running. Here the CLI starts it
itself, with a small watchdog process that stops it as soon as the CLI process is gone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from typing import ClassVar

from bertetl.errors import OrchestrationError
from bertetl.processes import watch

#: Seconds to wait for the temporary server (Prefect's own default, 20 s, is too short on a
#: busy 2-core machine); BERTETL_SERVER_START_TIMEOUT overrides it.
START_TIMEOUT_S = 120


@contextlib.contextmanager
def local_api() -> Iterator[None]:
    """Without `PREFECT_API_URL`, run the block against a temporary server for this process
    (stopped on exit; stopped by a watchdog if this process is killed). With it, do nothing."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield  # a running server: no need to import the server's code (~3 s)
        return
    from prefect.server.api.server import SubprocessASGIServer

    watchdogs: list[subprocess.Popen] = []

    class WatchedServer(SubprocessASGIServer):
        _instances: ClassVar[dict] = {}  # not Prefect's own shared instances

        def _run_uvicorn_command(self) -> subprocess.Popen:
            # the watchdog starts the moment the server process exists, before the server
            # is even healthy, so a kill during startup leaves nothing behind either
            process = super()._run_uvicorn_command()
            watchdogs.append(watch([process.pid]))
            return process

    server = WatchedServer()
    timeout = int(os.environ.get("BERTETL_SERVER_START_TIMEOUT", START_TIMEOUT_S))
    try:
        try:
            server.start(timeout=timeout)
        except Exception as e:  # Prefect raises RuntimeError or httpx errors here
            raise OrchestrationError(
                f"Prefect's temporary API server did not start within {timeout}s "
                f"({type(e).__name__}: {str(e)[:300]}); set BERTETL_SERVER_START_TIMEOUT=300 "
                "to wait longer, or PREFECT_API_URL to use a running Prefect server"
            ) from e
        assert server.server_process is not None
        if not watchdogs:  # a Prefect without that hook: watch from here on
            watchdogs.append(watch([server.server_process.pid]))
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
