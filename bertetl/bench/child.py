"""Run a function in a spawned child process and take back its result.

The bench runs each measured system in its own process, so that its peak RSS is its own and
a crash or an out-of-memory kill costs one row of the report, not the run. A child that dies
without a result (killed by the OOM killer, a segfault in a native library, `os._exit`) is an
error that says how it ended; the parent never waits on a result that cannot come.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from bertetl.errors import BertEtlError

T = TypeVar("T")


class ChildError(BertEtlError, RuntimeError):
    """A child process raised (the message is its exception's type and message) or died
    without a result (the message says its exit code or signal)."""


def exit_status(exitcode: int | None) -> str:
    """`exit code 3`, or for a process killed by a signal `exit code -9 (SIGKILL)`."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"exit code {exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:  # not a signal this platform names
            pass
    return f"exit code {exitcode}"


def _child(send: Connection, function: Callable[..., Any], *args: Any) -> None:
    """The child's side: `function(*args)`'s result, or its error as text, sent once."""
    try:
        try:
            outcome: tuple[str, Any] = ("ok", function(*args))
            send.send(outcome)  # pickled whole before any byte is written
        except Exception as e:  # reported to the parent, which raises it as a ChildError
            send.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        send.close()


def _receive(receive: Connection, process: Any) -> tuple[str, Any] | None:
    """The child's message, or None when it ended without one. Waits on the pipe and the
    process together: a dead child's pipe may stay open in a grandchild it forked."""
    wait([receive, process.sentinel])
    if not receive.poll():
        return None
    try:
        outcome: tuple[str, Any] = receive.recv()
    except EOFError:  # the child's end closed with nothing (or half a message) sent
        return None
    return outcome


def run_in_child(
    function: Callable[..., T],
    *args: Any,
    name: str = "the child process",
    cpus: set[int] | None = None,
) -> T:
    """`function(*args)` in a spawned process (`function` and `args` picklable), with the
    CPU affinity `cpus` when given (it is born with it, so every thread pool sizes itself to
    it); its return value. `ChildError` when it raised, or when it died without a result."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, function, *args))
    saved = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # this thread's mask, inherited by the child
    try:
        process.start()
    finally:
        if cpus is not None:
            os.sched_setaffinity(0, saved)
        send.close()  # the child holds the only writing end: its death closes the pipe
    try:
        outcome = _receive(receive, process)
    except BaseException:  # interrupted: the child goes too
        process.kill()
        raise
    finally:
        receive.close()
        process.join()
    if outcome is None:
        raise ChildError(f"{name} died without a result ({exit_status(process.exitcode)})")
    status, value = outcome
    if status != "ok":
        raise ChildError(value)
    return value
