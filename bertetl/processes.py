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
#: watched processes and every descendant it saw them start (SIGTERM, then SIGKILL after 5 s).
#: Linux only (/proc); elsewhere it stops nothing.
WATCHDOG = """
import os, signal, sys, time
parent, roots = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields  # [state, ppid, ..., starttime at index 19]
def alive(pid, start):
    fields = stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start
def family(known):
    # the roots' descendants now, added to those seen before: a child whose parent already
    # exited (and was re-parented) is still ours; (pid, start time) guards against pid reuse
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat(entry)) is not None:
            children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    todo = [pid for pid, _ in known.items()]
    while todo:
        for child, start in children.get(todo.pop(), []):
            if child not in known:
                known[child] = start
                todo.append(child)
    return known
known = {pid: fields[19] for pid in roots if (fields := stat(pid)) is not None}
while os.getppid() == parent and any(alive(p, s) for p, s in known.items()):
    family(known)
    time.sleep(0.5)
family(known)
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    for pid, start in known.items():
        if alive(pid, start):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(alive(p, s) for p, s in known.items()):
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
