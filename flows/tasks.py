"""Prefect tasks: thin wrappers that call the engine for one partition or chunk."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from bertetl.errors import BertEtlError, InputError, TransientError, is_transient
from bertetl.executors import Executor, Job
from bertetl.flows.params import RunOptions
from bertetl.flows.progress import RunProgress
from bertetl.io.chunks import Chunk
from bertetl.io.manifest import Manifest
from bertetl.results import FileResult
from bertetl.runs.plan import PartitionPlan, Plan
from bertetl.runs.staged import PartitionOutcome, enrich_partition, enrich_partitions


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures that may pass (EIO, timeouts, a flaky filesystem), not permanent
    ones (a corrupt file, a schema problem): those fail their partition at once."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            result = state.result(raise_on_failure=False)
        except Exception as e:  # the result could not be read back: judge by that error
            result = e
        error = result if isinstance(result, BaseException) else None
    return error is not None and is_transient(error)


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task run with its traceback; for bertetl's own permanent errors
    (a bad file, a bad model) the message already names the cause, so the log line is kept
    and the traceback dropped. Transient and unexpected errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BertEtlError) and not is_transient(error):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    """Install the filter on Prefect's task and flow run loggers (once)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForUserErrors())


def with_retries(task_fn: Any, run: RunOptions) -> Any:
    """The task with the run's retry count and exponential backoff with jitter."""
    return task_fn.with_options(
        retries=run.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=run.retry_delay_seconds)
        if run.retry_delay_seconds
        else 0,
        retry_jitter_factor=0.5,
    )


class _Counted:
    """Progress rows of one attempt, taken back if the attempt fails (a retry redoes them)."""

    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress
        self.rows = 0

    def __call__(self, rows: int) -> None:
        self.rows += rows
        self.progress.advance(rows)

    def undo(self) -> None:
        self.progress.advance(-self.rows)
        self.rows = 0


@task(
    name="enrich-partition",
    task_run_name="enrich {item.column}={item.value}",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_transient,
)
def enrich_partition_task(
    executor: Executor,
    item: PartitionPlan,
    dest: str,
    plan: Plan,
    reuse: bool,
    progress: RunProgress,
) -> Manifest:
    """Enrich and commit one partition (all or nothing)."""
    counted = _Counted(progress)
    try:
        return enrich_partition(executor, item, dest, plan, reuse=reuse, on_rows=counted)
    except BaseException:
        counted.undo()
        raise


@task(
    name="enrich-chunk",
    task_run_name="enrich {chunk.file.relative} part {chunk.part}",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_transient,
)
def enrich_chunk_task(
    executor: Executor, chunk: Chunk, staging: Path, progress: RunProgress
) -> FileResult:
    """Enrich one chunk: a whole file into its output, or a part of a big file."""
    counted = _Counted(progress)
    target = chunk.target if chunk.parts == 1 else chunk.part_path(staging)
    try:
        [result] = executor.run_jobs(
            [Job(chunk.file, target, chunk.schema, chunk.row_groups)],
            scratch=staging,
            on_rows=counted,
        )
        if result.error is not None:
            raise InputError(result.error)
        return result
    except BaseException:
        counted.undo()
        raise


@task(name="enrich-files", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def enrich_files_task(
    executor: Executor, jobs: list[Job], scratch: Any, progress: RunProgress
) -> list[FileResult]:
    """Enrich every file in one call (executors that start up per call); failed files are
    in the results, the others committed."""
    counted = _Counted(progress)
    try:
        return executor.run_jobs(jobs, on_rows=counted, scratch=scratch)
    except BaseException:
        counted.undo()
        raise


@task(
    name="enrich-partitions",
    task_run_name="enrich {name}",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_transient,
)
def enrich_partitions_task(
    executor: Executor,
    items: list[PartitionPlan],
    dest: str,
    plan: Plan,
    progress: RunProgress,
    name: str = "",
) -> list[PartitionOutcome]:
    """Enrich a group of partitions in one executor call, each committed
    or failed alone. When a partition failed in a way a retry may fix, the task fails after
    the others are committed, and its retry redoes the group."""
    counted = _Counted(progress)
    try:
        outcomes = enrich_partitions(executor, items, dest, plan, on_rows=counted)
    except BaseException:
        counted.undo()
        raise
    retryable = [o for o in outcomes if isinstance(o.error, TransientError)]
    if retryable:
        counted.undo()
        raise retryable[0].error
    return outcomes
