"""One Prefect API server for a whole test session, shared by every pytest-xdist worker.

Prefect's `prefect_test_harness()` starts a server per process, and on this 2-core machine one
start (a fresh SQLite database, its migrations, the block registrations) costs 20-30 s, paid
again by every worker. Here the first worker that needs a server starts one, under a file lock
in the session's shared temporary folder, and the others read its address from there.

The server must outlive the worker that started it (workers finish at different times), so it
is not a child to be stopped by that worker: it stops itself when the session's owner, the
pytest process that started the workers (or pytest itself without xdist), is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Runs uvicorn with Prefect's app in this process; a thread exits it once `owner` is gone.
LAUNCHER = """
import os, runpy, sys, threading, time
owner = int(sys.argv[1])
def exit_with_owner():
    while True:
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        time.sleep(0.5)
threading.Thread(target=exit_with_owner, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[2:]]
runpy.run_module("uvicorn", run_name="__main__")
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(database: Path) -> dict[str, str]:
    """Settings for a test's Prefect server on the SQLite `database`: no analytics, and no
    block registration at start-up (seconds on this machine; no test uses a block)."""
    return {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    }


def copy_database(info: dict, dest: Path) -> Path:
    """A consistent copy of the running shared server's database (SQLite's backup API), so
    that a test starting a server of its own skips the migrations (15-20 s here)."""
    import sqlite3

    with sqlite3.connect(info["database"]) as source, sqlite3.connect(dest) as copy:
        source.backup(copy)
    return dest


def start(root: Path, owner: int) -> dict:
    """Start the shared server if no process has yet (without waiting for it to be up);
    returns its record: `url`, `pid`, `log`."""
    root.mkdir(parents=True, exist_ok=True)
    record = root / "prefect-server.json"
    with open(root / "prefect-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.exists():
            return json.loads(record.read_text())
        port = _free_port()
        log = root / "prefect-server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= server_env(root / "prefect-server.db")
        env |= {"PREFECT_UI_ENABLED": "false", "PREFECT__SERVER_EPHEMERAL": "1"}
        app = ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
        app += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(owner), *app],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # not stopped with the worker that started it
            )
        info = {
            "url": f"http://127.0.0.1:{port}/api",
            "pid": process.pid,
            "log": str(log),
            "database": str(root / "prefect-server.db"),
        }
        record.write_text(json.dumps(info))
        return info


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until_up(info: dict, timeout: float = 240) -> str:
    """Wait for the server's health check; returns its API URL."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(info["pid"]):
            raise RuntimeError(f"the test Prefect server exited: {Path(info['log']).read_text()}")
        try:
            if httpx.get(f"{info['url']}/health", timeout=5).status_code == 200:
                return info["url"]
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the test Prefect server did not start in {timeout}s: {info['log']}")
