"""Local mode: the temporary Prefect server never outlives a killed CLI process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import os, signal, sys
from prefect.server.api.server import SubprocessASGIServer
from flows.local import local_api
with local_api():
    server = SubprocessASGIServer()
    open(sys.argv[1], "w").write(str(server.server_process.pid))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_server_is_stopped_when_the_cli_is_killed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    pid_file = tmp_path / "server.pid"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(pid_file)],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == -9, run.stderr[-2000:]
    server = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(server):
        os.kill(server, 9)
        raise AssertionError("the temporary Prefect server outlived the killed process")
