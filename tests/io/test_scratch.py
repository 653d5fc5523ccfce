"""Scratch folders: removed on exit, and a killed run's by the next run."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bertetl.io.scratch import HELD, reap_scratch, run_scratch, scratch_root


@pytest.fixture(autouse=True)
def _own_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # for the child processes


def test_a_scratch_folder_is_held_while_in_use_and_removed_after() -> None:
    with run_scratch("enrich-") as folder:
        assert folder.parent == scratch_root()
        assert sorted(p.name for p in folder.iterdir()) == [HELD]
        (folder / "copy.parquet").write_bytes(b"rows")
        assert reap_scratch() == 0  # this run is alive: its folder stays
        assert (folder / "copy.parquet").exists()
    assert not folder.exists()


def test_a_killed_runs_folder_is_removed_by_the_next_run() -> None:
    code = (
        "import os, signal; from bertetl.io.scratch import run_scratch\n"
        "with run_scratch('enrich-') as folder:\n"
        "    (folder / 'copy.parquet').write_bytes(b'a table copy')\n"
        "    print(folder, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    left = Path(killed.stdout.strip())
    assert (left / "copy.parquet").exists()  # nothing ran to remove it
    not_ours = scratch_root() / "made-by-hand"
    not_ours.mkdir()  # no .held: kept
    with run_scratch("enrich-") as folder:
        assert not left.exists()
        assert not_ours.exists()
        assert folder.exists()


def test_a_live_run_elsewhere_keeps_its_folder() -> None:
    with run_scratch("enrich-") as folder:
        fd = os.open(folder / HELD, os.O_RDONLY)
        try:  # what a reaper in another run sees: the lock is taken
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        code = "from bertetl.io.scratch import reap_scratch; print(reap_scratch())"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.stdout.strip() == "0", other.stderr
        assert folder.exists()
