"""No process outlives its run: a watchdog for helper processes, and workers that die with
their parent.

A SIGKILLed or OOM-killed run gets no chance to clean up, so the processes it started must
notice on their own: worker processes ask the kernel to kill them when their parent dies
(`PR_SET_PDEATHSIG`), and servers or clusters the run starts (Prefect's temporary API, a local
Ray) are watched by a small child process that stops them, with everything they started, as
soon as the run is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1

#: Runs as a child of the run: when the run dies, this is re-parented, and it stops the
#: watched processes and all their descendants (SIGTERM, then SIGKILL after 5 s).
WATCHDOG = """
import os, signal, sys, time
parent, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def alive(pid):
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
def family(roots):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found
while os.getppid() == parent and any(alive(p) for p in pids):
    time.sleep(0.5)
targets = [p for p in family(pids) if alive(p)]
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    for pid in targets:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.1)
"""


def watch(pids: list[int]) -> subprocess.Popen:
    """Start a watchdog that stops `pids` (and their descendants) once this process is gone;
    it exits by itself when they are all gone first."""
    return subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), *map(str, pids)],
        stdin=subprocess.DEVNULL,
    )


def die_with_parent(parent: int) -> None:
    """Make the kernel SIGKILL this process when its parent dies (Linux), so a worker never
    outlives a killed run nor writes after it; exit at once if the parent is already gone.

    The signal fires when the parent *thread* that started this process exits: start workers
    from a thread that outlives them (e.g. the one that waits for their results).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
