"""`bench.child.run_in_child`: a child's result comes back; a child that raised, or died
without a result, is an error that says so, never a wait for ever."""

from __future__ import annotations

import os
import signal

import pytest

from bertetl.bench.child import ChildError, exit_status, run_in_child

#: A child that is not reported hangs the parent: fail instead (spawn + import: ~1 s each).
pytestmark = pytest.mark.timeout(120)


def _pid_and_cpus(big: int) -> tuple[int, set[int], bytes]:
    return os.getpid(), os.sched_getaffinity(0), b"x" * big


def _raises() -> None:
    raise ValueError("no such column 'txt'")


def _killed_by(signal_number: int) -> None:
    os.kill(os.getpid(), signal_number)


def _unpicklable_result() -> object:
    return lambda: None


def test_the_result_comes_back_from_another_process() -> None:
    pid, cpus, big = run_in_child(_pid_and_cpus, 1 << 22)  # larger than a pipe's buffer
    assert pid != os.getpid() and cpus == os.sched_getaffinity(0) and len(big) == 1 << 22


def test_the_child_is_born_pinned_and_the_parent_keeps_its_cpus() -> None:
    before = os.sched_getaffinity(0)
    first = {min(before)}
    _, cpus, _ = run_in_child(_pid_and_cpus, 0, cpus=first)
    assert cpus == first and os.sched_getaffinity(0) == before


def test_an_exception_in_the_child_is_its_type_and_message() -> None:
    with pytest.raises(ChildError) as raised:
        run_in_child(_raises)
    assert str(raised.value) == "ValueError: no such column 'txt'"


@pytest.mark.parametrize(
    ("signal_number", "status"),
    [(signal.SIGKILL, "exit code -9 (SIGKILL)"), (signal.SIGTERM, "exit code -15 (SIGTERM)")],
)
def test_a_child_killed_by_a_signal_is_reported_with_it(signal_number: int, status: str) -> None:
    with pytest.raises(ChildError) as raised:
        run_in_child(_killed_by, signal_number, name="the process of engine-e2e")
    assert str(raised.value) == f"the process of engine-e2e died without a result ({status})"


def test_a_child_that_exits_without_a_result_is_reported_with_its_exit_code() -> None:
    with pytest.raises(
        ChildError, match=r"^the child process died without a result \(exit code 3\)$"
    ):
        run_in_child(os._exit, 3)


def test_a_result_that_cannot_be_sent_is_an_error_not_a_death() -> None:
    with pytest.raises(ChildError, match=r"^(PicklingError|AttributeError): "):
        run_in_child(_unpicklable_result)


def test_exit_status_names_signals_only() -> None:
    assert exit_status(0) == "exit code 0"
    assert exit_status(-15) == "exit code -15 (SIGTERM)"
    assert exit_status(-200) == "exit code -200"
    assert exit_status(None) == "exit code None"
