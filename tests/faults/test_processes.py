"""Rule 5: no process outlives its run. A SIGKILLed `bertetl enrich` takes its worker
processes (and multiprocessing's resource tracker) and a local Ray it started down with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import write_partitioned

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def family(root: int) -> dict[int, str]:
    """`root`'s descendants (pid -> command line), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, awaiting its reaper


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def listing(dest: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(dest)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in dest.rglob("*")
        if p.is_file()
    }


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "bertetl", "enrich", *args],
        cwd=REPO,
        env=env,
        stdout=open(tmp_path / "out.log", "w"),
        stderr=subprocess.STDOUT,
    )


def test_killed_enrich_takes_its_workers_down(tiny_embed_dir: Path, tmp_path: Path) -> None:
    src = write_partitioned(tmp_path / "src", days=4, rows=400, files_per_day=2)
    dest = tmp_path / "dest"
    run = _start(
        [str(src), str(dest), "--text-column", "text", "--embed-model", str(tiny_embed_dir),
         "--workers", "2", "--device", "cpu", "--window-rows", "4", "--batch-tokens", "32"],
        tmp_path,
    )  # fmt: skip

    def workers() -> dict[int, str]:
        return {p: c for p, c in family(run.pid).items() if "multiprocessing" in c}

    try:
        wait_until(
            lambda: (
                sum("spawn_main" in c for c in workers().values()) == 2 or run.poll() is not None
            ),
            120,
            "the workers never started",
        )
        assert run.poll() is None, (tmp_path / "out.log").read_text()
        helpers = workers()  # the two workers and the resource tracker
        run.send_signal(signal.SIGKILL)
        run.wait()
        wait_until(
            lambda: not any(alive(pid) for pid in helpers),
            15,
            f"left running after the run was killed: {[helpers[p] for p in helpers if alive(p)]}",
        )
    finally:
        if run.poll() is None:
            run.kill()
    before = listing(dest) if dest.exists() else {}
    time.sleep(1.0)
    assert (listing(dest) if dest.exists() else {}) == before  # nothing writes any more


@pytest.mark.ray
def test_killed_ray_run_takes_its_local_ray_down(tiny_embed_dir: Path, tmp_path: Path) -> None:
    src = write_partitioned(tmp_path / "src", days=2, rows=400, files_per_day=1)
    run = _start(
        [str(src), str(tmp_path / "dest"), "--text-column", "text",
         "--embed-model", str(tiny_embed_dir), "--executor", "ray", "--window-rows", "4"],
        tmp_path,
    )  # fmt: skip
    try:
        wait_until(
            lambda: any("raylet" in c for c in family(run.pid).values()) or run.poll() is not None,
            120,
            "Ray never started",
        )
        assert run.poll() is None, (tmp_path / "out.log").read_text()
        time.sleep(3)  # let its agents and workers start too
        ray_processes = {p: c for p, c in family(run.pid).items() if "watchdog" not in c}
        assert any("gcs_server" in c for c in ray_processes.values())
        run.send_signal(signal.SIGKILL)
        run.wait()
        wait_until(
            lambda: not any(alive(pid) for pid in ray_processes),
            30,
            "left running: " + str([ray_processes[p][:80] for p in ray_processes if alive(p)]),
        )
    finally:
        if run.poll() is None:
            run.kill()
