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
import json
import os
import signal
import subprocess
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1

#: Runs as a child of the run: when the run dies, this is re-parented, and it stops the
#: watched processes and every descendant it saw them start (SIGTERM, then SIGKILL after 5 s),
#: plus Ray workers whose raylet it knew (`RAY_RAYLET_PID`), even one orphaned between scans.
#: Linux only (/proc); elsewhere it stops nothing.
WATCHDOG = """
import json, os, signal, sys, time
args = json.loads(sys.argv[1])
parent, roots, existing = args["parent"], args["roots"], set(args["existing"])
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()  # state, ppid, ... starttime [19]
    except (OSError, IndexError):
        return None
def alive(pid, start):
    fields = stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start
def family(known, tops, skip):
    # descendants of `tops` now, added to those seen before: a child whose parent already
    # exited (and was re-parented) is still ours; (pid, start time) guards against pid reuse
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat(entry)) is not None:
            children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    todo = [*tops, *known]
    while todo:
        for child, start in children.get(todo.pop(), []):
            if child not in known and child not in skip:
                known[child] = start
                todo.append(child)
    return known
me = os.getpid()
if roots:  # watch these processes and what they start
    known, tops, skip = {p: f[19] for p in roots if (f := stat(p)) is not None}, [], {me}
else:  # watch every process the parent starts from now on (not those it had before)
    known, tops, skip = {}, [parent], {me, *existing}
while os.getppid() == parent and (tops or any(alive(p, s) for p, s in known.items())):
    family(known, tops, skip)
    time.sleep(0.5)
def ray_orphans(known, skip):
    # Ray's workers name their raylet in RAY_RAYLET_PID; one the raylet started just before
    # it died with the run was re-parented before any scan saw it as a descendant
    names = {str(pid).encode() for pid in known}
    for entry in os.listdir("/proc"):
        pid = int(entry) if entry.isdigit() else None
        if pid is None or pid in known or pid in skip:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read().split(b"\\0")
        except OSError:
            continue
        if any(v[15:] in names for v in environ if v.startswith(b"RAY_RAYLET_PID=")):
            if (fields := stat(pid)) is not None:
                known[pid] = fields[19]
    return known
if os.getppid() != parent:  # the run is gone: stop what it left
    family(known, [], skip)
    ray_orphans(known, skip)
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


def watch(pids: list[int] | None = None) -> subprocess.Popen:
    """Start a watchdog that stops `pids` and their descendants once this process is gone
    (it exits by itself when they are all gone first); without `pids`, every process this
    one starts from now on (stop the watchdog with `.terminate()` when they are done)."""
    args = {"parent": os.getpid(), "roots": list(pids or []), "existing": _descendants()}
    return subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, json.dumps(args)], stdin=subprocess.DEVNULL
    )


def _descendants() -> list[int]:
    """This process's descendants now (Linux; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pool_worker(parent: int, exit_poll: float | None = None) -> None:
    """Set up a pool worker: it dies with `parent` (`die_with_parent`, or with `exit_poll`
    `exit_with_parent`, polled that often), and ignores Ctrl-C, which its parent handles by
    stopping the pool (a terminal sends SIGINT to every process of the job: the workers would
    each print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if exit_poll is None:
        die_with_parent(parent)
    else:
        exit_with_parent(parent, exit_poll)


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


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Exit this process within `interval` seconds of its parent process dying, whichever of
    the parent's threads started it (unlike `die_with_parent`, whose signal follows the
    starting thread): for pool workers that write nothing, started from any thread."""
    if os.getppid() != parent:
        os._exit(1)

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch_parent, name="bertetl-exit-with-parent", daemon=True).start()
