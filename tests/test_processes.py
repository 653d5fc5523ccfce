"""The watchdog (`bertetl.processes.watch`) stops what a killed run left, including a Ray
worker orphaned before any scan saw it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.test_processes import alive, wait_until

#: The "run": starts the watchdog, then a stand-in raylet that double-forks a stand-in worker
#: (so the worker is re-parented at once, as one is when its raylet dies between two of the
#: watchdog's scans) naming the raylet in RAY_RAYLET_PID, as Ray's workers do, and without the
#: watch's tag in its environment; prints the worker's, the raylet's and the watchdog's pids,
#: then waits to be killed. The watchdog is stopped (SIGSTOP) before the raylet starts, so no
#: scan of it can see the raylet as the run's child: the run dies first.
RUN = """
import os, signal, subprocess, sys, time
from bertetl.processes import tagging, watch
watchdog = watch()
os.kill(watchdog.pid, signal.SIGSTOP)
with tagging(watchdog):
    raylet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
env = {**os.environ, "RAY_RAYLET_PID": str(raylet.pid)}  # untagged: tagging() is over
quiet = "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
spawn = "import subprocess; print(subprocess.Popen(['sleep', '60'], env=%r, %s).pid)" % (env, quiet)
worker = subprocess.run([sys.executable, "-c", spawn], capture_output=True, text=True)
print(worker.stdout.strip(), raylet.pid, watchdog.pid, flush=True)
time.sleep(60)
"""


def _start(code: str) -> tuple[subprocess.Popen, list[int]]:
    """A stand-in run (`code`) and the pids it prints on its first line."""
    run = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert run.stdout is not None
    return run, [int(pid) for pid in run.stdout.readline().split()]


def test_a_killed_run_takes_an_orphaned_ray_worker_down() -> None:
    run, (worker, raylet, watchdog) = _start(RUN)
    try:
        assert (
            alive(worker)
            and int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
            != run.pid
        )  # not the run's descendant: only its RAY_RAYLET_PID ties it to the run
        run.send_signal(signal.SIGKILL)
        run.wait()
        os.kill(watchdog, signal.SIGCONT)  # its first look finds the run gone: the tag in
        # the raylet's environment names it the run's, and the raylet's pid names the worker
        wait_until(lambda: not alive(raylet), 15, "the watched raylet outlived the run")
        wait_until(lambda: not alive(worker), 15, "the raylet's orphaned worker outlived the run")
    finally:
        for pid in (worker, raylet, watchdog):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


#: A "run" whose worker is started from a thread that then exits (as a pool's workers may be),
#: prints the worker's pid once the worker is up, then waits to be killed.
POOL_RUN = """
import os, subprocess, sys, threading, time
code = (
    "import sys, time; from bertetl.processes import exit_with_parent; "
    "exit_with_parent(int(sys.argv[1])); print('up', flush=True); time.sleep(60)"
)
started = []
def start():
    started.append(subprocess.Popen(
        [sys.executable, "-c", code, str(os.getpid())], stdout=subprocess.PIPE, text=True
    ))
thread = threading.Thread(target=start)
thread.start()
thread.join()
worker = started[0]
assert worker.stdout.readline().strip() == "up"
print(worker.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.slow  # a subprocess that waits to be killed
def test_a_pool_worker_outlives_its_starting_thread_but_not_its_run() -> None:
    run, (worker,) = _start(POOL_RUN)
    try:
        assert alive(worker)  # its starting thread is gone; it stays for the run
        run.send_signal(signal.SIGKILL)
        run.wait()
        wait_until(lambda: not alive(worker), 15, "the pool worker outlived its killed run")
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
