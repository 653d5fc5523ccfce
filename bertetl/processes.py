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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1

#: The environment variable `tagging()` sets: processes that carry a watchdog's value are the
#: run's.
WATCH_TAG = "BERTETL_WATCH_TAG"

#: Runs as a child of the run: when the run dies, this is re-parented, and it stops the
#: watched processes and every descendant it saw them start (SIGTERM, then SIGKILL after 5 s),
#: plus, found even when orphaned before a scan saw them, the processes that carry its tag
#: (`WATCH_TAG`) and Ray workers whose raylet it knew (`RAY_RAYLET_PID`).
#: Linux only (/proc); elsewhere it stops nothing.
WATCHDOG = """
import json, os, signal, sys, time
args = json.loads(sys.argv[1])
parent, roots, existing = args["parent"], args["roots"], set(args["existing"])
mark = args["mark"].encode() if args["mark"] else None  # "BERTETL_WATCH_TAG=<tag>"
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
def strays(known, skip):
    # processes whose parent died before any scan saw them as descendants: those that carry
    # this watch's tag in their environment (what the run started after `watch()`, and what
    # those started, inherit it), then Ray workers naming a raylet we know in RAY_RAYLET_PID
    environs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in known and int(entry) not in skip:
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    environs[int(entry)] = handle.read().split(b"\\0")
            except OSError:
                pass
    for pid, environ in environs.items():
        if mark is not None and mark in environ and (fields := stat(pid)) is not None:
            known[pid] = fields[19]
    names = {  # a known pid now another process's (reused) names no raylet of ours
        b"RAY_RAYLET_PID=" + str(pid).encode()
        for pid, start in known.items()
        if (fields := stat(pid)) is None or fields[19] == start
    }
    for pid, environ in environs.items():
        if pid not in known and names.intersection(environ):
            if (fields := stat(pid)) is not None:
                known[pid] = fields[19]
    return known
if os.getppid() != parent:  # the run is gone: stop what it left
    family(known, [], skip)
    strays(known, skip)
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
    one starts from now on (stop the watchdog with `.terminate()` when they are done), and
    those started under `tagging(watchdog)` even if they were re-parented before a scan saw
    them."""
    tag = None if pids else uuid.uuid4().hex
    args = {
        "parent": os.getpid(),
        "roots": list(pids or []),
        "existing": _descendants(),
        "mark": tag and f"{WATCH_TAG}={tag}",  # how a tagged process's environment shows it
    }
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, json.dumps(args)],
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != WATCH_TAG},  # no one's stray
    )
    watchdog.tag = tag  # type: ignore[attr-defined]
    return watchdog


@contextmanager
def tagging(watchdog: subprocess.Popen | None) -> Iterator[None]:
    """Processes started inside (and those they start) carry `watchdog`'s tag in their
    environment: once the run is gone the watchdog stops them wherever they were re-parented.
    Wrap only what starts the run's own processes (a local Ray's `ray.init`), never a daemon
    meant to outlive the run. A no-op for a watchdog of given pids, or none."""
    tag = getattr(watchdog, "tag", None)
    if tag is None:
        yield
        return
    saved = os.environ.get(WATCH_TAG)
    os.environ[WATCH_TAG] = tag
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(WATCH_TAG, None)
        else:
            os.environ[WATCH_TAG] = saved


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
