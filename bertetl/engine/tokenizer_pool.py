"""Validate and tokenize windows in a pool of worker processes (`--tokenizers N`).

In one process the CPU stages run in the prefetch thread: the Rust tokenizer's `encode_batch`
uses every core, but everything around it (text to Python strings, ids to Arrow, window
cutting, validation) holds the GIL, and so does the Parquet writer on the main thread. A pool
of processes, each with the pipeline's own CPU stages, runs all of that in parallel, as
text-embeddings-inference's `--tokenization-workers` does. Windows travel both ways as Arrow
record batches (pickled through Arrow's IPC buffers, not as Python lists), and come back in
order; at most `processes + depth` windows are in flight, so memory stays bounded.

The pool is `concurrent.futures.ProcessPoolExecutor` with spawned processes (a fork of a
process that holds torch's and the tokenizer's threads is not safe). Each worker exits within
half a second of the process that started it, so a killed run leaves none behind; it writes
nothing, so that half second cannot touch an output.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain
from typing import Protocol

import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.engine.tokenize import TokenizerSnapshot
from bertetl.errors import ModelError
from bertetl.processes import pool_worker
from bertetl.results import StageCounters


class CountingStage(Protocol):
    counters: StageCounters


class CountingTokenizer(CountingStage, Protocol):
    truncated_rows: int


class Preparer(Protocol):
    """What a worker needs of the pipeline (`bertetl.engine.pipeline.Pipeline`)."""

    @property
    def cpu_stages(self) -> Sequence[CountingStage]: ...

    @property
    def tokenize_stages(self) -> Sequence[CountingTokenizer]: ...

    def setup_tokenizers(
        self, snapshots: Mapping[str, TokenizerSnapshot] | None = None
    ) -> None: ...

    def prepare_inline(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]: ...


log = logging.getLogger(__name__)

#: This worker process's pipeline, its tokenizers loaded (set by `_start_worker`).
_worker_pipeline: Preparer | None = None


@dataclass
class PreparedWindow:
    """One window after the CPU stages, with what they counted doing it (in stage order);
    None when they ran in this process and counted there."""

    batch: pa.RecordBatch
    counters: list[StageCounters] | None
    truncated_rows: list[int] | None


def _start_worker(
    make_pipeline: Callable[[EngineConfig], Preparer],
    config: EngineConfig,
    parent: int,
    snapshots: Mapping[str, TokenizerSnapshot],
) -> None:
    """Worker set-up: die with the parent, one tokenizer thread (the pool is the
    parallelism), then build the pipeline and its tokenizers from the parent's snapshots
    (transformers, and torch, are imported only for an NER head's tokenizer)."""
    global _worker_pipeline
    pool_worker(parent, exit_poll=0.5)  # dies with the parent, which handles Ctrl-C
    os.environ["RAYON_NUM_THREADS"] = "1"  # read when the tokenizer first encodes a batch
    pipeline = make_pipeline(config)
    pipeline.setup_tokenizers(snapshots)
    _worker_pipeline = pipeline


#: Seconds `start()` waits for every worker to answer before going on (a worker still
#: loading then answers its first window a little later).
START_TIMEOUT_S = 120.0


def _probe() -> int:
    """A worker's pid, after a moment (so one fast worker cannot answer every probe)."""
    time.sleep(0.05)
    return os.getpid()


def _prepare_window(batch: pa.RecordBatch) -> PreparedWindow:
    """Run this worker's CPU stages over one window; the counters are this window's alone."""
    pipeline = _worker_pipeline
    if pipeline is None:
        raise RuntimeError("tokenizer pool worker used before its set-up")
    stages = pipeline.cpu_stages
    for stage in stages:
        stage.counters = StageCounters()
    tokenizers = pipeline.tokenize_stages
    for tokenizer in tokenizers:
        tokenizer.truncated_rows = 0
    (out,) = pipeline.prepare_inline([batch])
    return PreparedWindow(
        out, [stage.counters for stage in stages], [t.truncated_rows for t in tokenizers]
    )


def _first(pending: deque[tuple[pa.RecordBatch, Future[PreparedWindow]]]) -> PreparedWindow:
    """The oldest window's result; it leaves `pending` only once it is in hand (a dead
    worker leaves it there, to be prepared again)."""
    window = pending[0][1].result()
    pending.popleft()
    return window


class TokenizerPool:
    """`processes` worker processes running a pipeline's CPU stages over windows, in order.

    Each worker builds its own pipeline with `make_pipeline(config)` (the `Pipeline` class: a
    picklable reference, so this module needs no import of it).
    """

    def __init__(
        self,
        make_pipeline: Callable[[EngineConfig], Preparer],
        config: EngineConfig,
        processes: int,
        depth: int = 2,
        snapshots: Mapping[str, TokenizerSnapshot] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("a tokenizer pool needs at least one process")
        self.make_pipeline = make_pipeline
        self.config = config
        self.processes = processes
        self.depth = depth
        self.snapshots = dict(snapshots or {})
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker processes and wait until each has answered (set up: an error in
        a worker's set-up surfaces here as a `ModelError`, not on the first window)."""
        if self._pool is not None:
            return
        pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.make_pipeline, self.config, os.getpid(), self.snapshots),
        )
        self._pool = pool
        try:  # rounds of short probes until every worker answered: all set up
            seen: set[int] = set()
            deadline = time.monotonic() + START_TIMEOUT_S
            while len(seen) < self.processes and time.monotonic() < deadline:
                probes = [pool.submit(_probe) for _ in range(self.processes)]
                seen.update(probe.result() for probe in probes)
        except BrokenProcessPool as e:
            self.close()
            raise ModelError(
                f"a tokenizer process could not start ({e}); its error is above, on stderr"
            ) from e
        except BaseException:
            self.close()
            raise

    def map(
        self,
        batches: Iterable[pa.RecordBatch],
        fallback: Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]],
    ) -> Iterator[PreparedWindow]:
        """Each window through the workers, yielded in input order, with at most
        `processes + depth` windows submitted and not yet yielded.

        When a worker dies (killed, out of memory), the pool is closed and the windows not
        yet prepared, in flight or still to come, go through `fallback` (the CPU stages in
        this process, which count themselves: `counters` None); the next `start()` brings
        the pool back. Same output either way."""
        self.start()
        assert self._pool is not None
        pool = self._pool
        pending: deque[tuple[pa.RecordBatch, Future[PreparedWindow]]] = deque()
        remaining = iter(batches)
        taken: list[pa.RecordBatch] = []  # read, not yet submitted (a dead pool refuses it)
        try:
            try:
                for batch in remaining:
                    taken.append(batch)
                    pending.append((batch, pool.submit(_prepare_window, batch)))
                    taken.clear()
                    if len(pending) >= self.processes + self.depth:
                        yield _first(pending)
                while pending:
                    yield _first(pending)
            except BrokenProcessPool as e:
                log.warning(
                    "a tokenizer process died (%s); this file's remaining windows are "
                    "prepared in this process, and the pool restarts for the next one",
                    e,
                )
                self.close()
                unprepared = [batch for batch, _ in pending] + taken
                pending.clear()
                for batch in fallback(chain(unprepared, remaining)):
                    yield PreparedWindow(batch, None, None)
        finally:
            for _, future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the workers (windows not yet started are dropped)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
