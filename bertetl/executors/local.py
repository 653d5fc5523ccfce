"""The local executor: the pipeline in this process, or a pool of worker processes."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing.connection import wait
from pathlib import Path

import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.engine.embed import check_one_calibration
from bertetl.engine.pipeline import Pipeline
from bertetl.engine.reuse import ReuseIndex
from bertetl.engine.window_rows import rows_read
from bertetl.executor_registry import LocalOptions
from bertetl.executors.base import Capabilities, Job
from bertetl.processes import pool_worker
from bertetl.results import EnrichReport, FileResult


def resolve_workers(config: EngineConfig) -> int:
    """`workers`, else one per visible GPU when running on CUDA, else 1."""
    options = config.executor
    if isinstance(options, LocalOptions) and options.workers:
        return options.workers
    if config.device == "cpu":
        return 1
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


#: Tokenizer processes per model process at most, by default.
MAX_DEFAULT_TOKENIZERS = 8


def resolve_tokenizers(config: EngineConfig, workers: int, device: str | None = None) -> int:
    """`tokenizers`, else 0 on the CPU (the model needs every core), else the cores left
    after each model process's model and writer threads, shared out, at most 8 each
    (`device`: `check_device`'s, found here when not given)."""
    options = config.executor
    if isinstance(options, LocalOptions) and options.tokenizers is not None:
        return options.tokenizers
    if (device or check_device(config)) != "cuda":
        return 0
    left = len(os.sched_getaffinity(0)) - 2 * workers
    return max(0, min(MAX_DEFAULT_TOKENIZERS, left // workers))


def check_device(config: EngineConfig) -> str:
    """The kind of device the models will run on ("cpu" or "cuda"), refusing at once what
    `runtime_device` refuses (`--device cuda` without CUDA, `--cuda-graphs` off CUDA, int8 or
    ONNX on CUDA): before DEST is locked, not when the models load."""
    if config.device == "cpu":
        return "cpu"
    from bertetl.engine.encoders import ModelRuntime, runtime_device

    return str(runtime_device(ModelRuntime.from_config(config)).type)


def _pin_worker(index: int, count: int) -> None:
    """Worker `index` of `count` takes GPU `index` (round robin), or its share of CPU threads."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))


def run_in_worker(
    config: EngineConfig, jobs: list[Job], index: int, count: int, tokenizers: int = 0
) -> EnrichReport:
    """A worker process's share: pin a GPU or CPU threads, load the models (and start its
    `tokenizers` processes), run the jobs."""
    _pin_worker(index, count)
    pipeline = Pipeline(config)
    pipeline.setup()
    pipeline.start_tokenizer_pool(tokenizers)
    report = EnrichReport()
    try:
        for job in jobs:
            report.files.append(
                pipeline.run_file(
                    job.file,
                    job.target,
                    job.schema,
                    row_groups=job.row_groups,
                    sink_factory=job.sink,
                )
            )
    finally:
        pipeline.teardown()
    pipeline.collect(report)
    return report


class LocalExecutor:
    """Runs jobs one after another in this process, or, with more than one worker (`workers`,
    or one per GPU), splits them across worker processes, each with its own model copy."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pipeline = Pipeline(config)
        self.workers = resolve_workers(config)
        check_one_calibration(config.embed_precision, self.workers)
        self.device = check_device(config)  # refused here, before DEST is locked
        self.tokenizers = resolve_tokenizers(config, self.workers, self.device)
        # window rows are not reused: the reuse index holds one output row per text
        self.capabilities = Capabilities(
            reuses_rows=not config.emits_windows, object_storage=True, emits_windows=True
        )
        self._worker_reports: list[EnrichReport] = []

    def setup(self) -> None:
        """Load the models here (with workers, each worker loads its own instead)."""
        if self.workers <= 1:
            self._setup_here()

    def _setup_here(self) -> None:
        self.pipeline.setup()
        self.pipeline.start_tokenizer_pool(self.tokenizers)

    def run_jobs(
        self,
        jobs: list[Job],
        *,
        scratch: Path,
        reuse: ReuseIndex | None = None,
        on_rows: Callable[[int], None] | None = None,
        stop_at_error: bool = False,
    ) -> list[FileResult]:
        """Run `jobs` here, or across the worker pool when there are several workers and
        jobs and no row reuse; results in job order."""
        workers = min(self.workers, len(jobs))
        if workers > 1 and reuse is None:
            return self._run_in_pool(jobs, workers, on_rows)
        self._setup_here()
        results: list[FileResult] = []
        on_batch = None if on_rows is None else (lambda batch: on_rows(self._rows_read(batch)))
        for job in jobs:
            if stop_at_error and any(r.error is not None for r in results):
                break
            results.append(
                self.pipeline.run_file(
                    job.file,
                    job.target,
                    job.schema,
                    row_groups=job.row_groups,
                    reuse=reuse,
                    on_batch=on_batch,
                    sink_factory=job.sink,
                )
            )
        return results

    def _rows_read(self, batch: pa.RecordBatch) -> int:
        """Input rows an output batch accounts for (progress counts rows read)."""
        if self.config.emits_windows:
            return rows_read(batch, self.config.prefix)
        return batch.num_rows

    def _run_in_pool(
        self, jobs: list[Job], workers: int, on_rows: Callable[[int], None] | None
    ) -> list[FileResult]:
        context = multiprocessing.get_context("spawn")
        config = self.pipeline.absolute_config()  # Hub names pinned to the planned commit
        # the workers are started from, and waited for in, this thread: they die with it
        # (PR_SET_PDEATHSIG), so a killed run leaves no worker writing behind it
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=pool_worker, initargs=(os.getpid(),)
        )
        try:
            futures = [
                pool.submit(run_in_worker, config, jobs[i::workers], i, workers, self.tokenizers)
                for i in range(workers)
            ]
            by_source: dict[str, FileResult] = {}
            for future in as_completed(futures):
                part = future.result()
                by_source.update((result.source, result) for result in part.files)
                if on_rows is not None:
                    on_rows(sum(result.rows_read for result in part.files))
                part.files = []  # the counters stay, for collect()
                self._worker_reports.append(part)
        except BaseException:  # Ctrl-C, or a failure: stop the workers now, not after their files
            _stop_workers(pool)
            raise
        pool.shutdown(wait=True)
        return [by_source[job.file.path] for job in jobs]

    def collect(self, report: EnrichReport) -> None:
        """Add the counters of this process's pipeline and of every worker's."""
        self.pipeline.collect(report)
        for part in self._worker_reports:
            part.label_counts = {}  # the files' results carry them
            report.merge(part)

    def teardown(self) -> None:
        self.pipeline.teardown()


def _stop_workers(pool: ProcessPoolExecutor, timeout: float = 30.0) -> None:
    """Terminate the pool's worker processes and wait for them (a file a worker was writing
    stays a hidden temp file, never committed; the next run removes it)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() forgets it
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout)
        if process.exitcode is None and not wait([process.sentinel], 0):  # still running
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    # the pool's own thread reaps the workers too, and a worker it reaped first looks alive
    # to our join until that thread is done: wait for it, a bounded time (it ends once its
    # workers are dead, unless one died half-way through sending a result)
    if manager is not None:
        manager.join(timeout)
