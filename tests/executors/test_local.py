"""The local executor's worker pool: stopped at once by Ctrl-C, not after its files."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.executors.base import Job
from bertetl.executors.local import LocalExecutor, _stop_workers
from bertetl.io.read import SourceFile
from bertetl.processes import die_with_parent

pytestmark = pytest.mark.slow  # worker processes, each loading a model


def test_ctrl_c_stops_the_workers_before_their_files_are_done(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """Ctrl-C arrives (here: raised where the run waits, as soon as the small file's worker
    is done) while the other worker is mid-way through a big file: the run stops now, that
    worker is terminated, and its file is never committed."""
    small = write_table({"text": ["one"]}, "src/a.parquet")
    big = write_table({"text": [f"row {i} of a long file" for i in range(30_000)]}, "src/b.parquet")
    config = EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), workers=2, window_rows=512
    )
    executor = LocalExecutor(config)
    jobs = [
        Job(SourceFile(str(path), path.name), tmp_path / "out" / path.name, pq.read_schema(path))
        for path in (small, big)
    ]

    def interrupt(rows: int) -> None:
        raise KeyboardInterrupt

    before = set(multiprocessing.active_children())
    with pytest.raises(KeyboardInterrupt):
        executor.run_jobs(jobs, scratch=tmp_path / "scratch", on_rows=interrupt)
    assert not set(multiprocessing.active_children()) - before  # the workers are gone
    assert (tmp_path / "out" / "a.parquet").exists()
    assert not (tmp_path / "out" / "b.parquet").exists()  # stopped mid-file: not committed


def _ignore_sigterm(parent: int) -> None:
    """A pool worker that ignores SIGTERM (and still dies with the test, whatever happens)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent)


def test_a_worker_that_ignores_sigterm_is_killed() -> None:
    """A worker that does not stop on SIGTERM within the wait is killed, and the pool waited
    for: nothing is left running."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ignore_sigterm,
        initargs=(os.getpid(),),
    )
    try:
        assert pool.submit(abs, -1).result() == 1  # the worker is up
        job = pool.submit(time.sleep, 60)
        stopping = threading.Thread(target=_stop_workers, args=(pool, 0.5))
        stopping.start()
        stopping.join(30)
        assert not stopping.is_alive(), "stopping the pool hung on the worker"
        assert not set(multiprocessing.active_children()) - before
        assert job.done()
    finally:
        for process in set(multiprocessing.active_children()) - before:
            process.kill()
