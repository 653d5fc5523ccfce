"""Local mode: the temporary Prefect server never outlives a killed CLI process, whether it
is killed while the server starts or while a flow runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.test_processes import alive  # a zombie is dead: pid 1 may reap late

SCRIPT = """
import os, signal, sys
from pathlib import Path

def children():
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and "uvicorn" in (stat.parent / "cmdline").read_text():
            pids.append(int(stat.parent.name))
    return pids

def die():
    Path(sys.argv[1]).write_text(" ".join(map(str, children())))
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[2] == "startup":
    import httpx
    httpx.Client.get = lambda self, *args, **kwargs: die()  # the first health check
from bertetl.flows.local import local_api
with local_api():
    die()
"""


@pytest.mark.slow
@pytest.mark.parametrize("when", ["startup", "running"])
def test_server_is_stopped_when_the_cli_is_killed(
    own_prefect_server_env: dict[str, str], tmp_path: Path, when: str
) -> None:
    env = own_prefect_server_env
    pid_file = tmp_path / "server.pid"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(pid_file), when],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == -9, run.stderr[-2000:]
    servers = [int(pid) for pid in pid_file.read_text().split()]
    assert len(servers) == 1
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in servers if alive(pid)]
    for pid in left:
        os.kill(pid, 9)
    assert not left, "the temporary Prefect server outlived the killed process"
