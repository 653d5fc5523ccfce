"""The analyst-triggered enrich flow: one source into one dest, cut into chunk tasks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from bertetl.config import EngineConfig
from bertetl.executors import Executor, Job, make_executor
from bertetl.flows.params import EnrichParams
from bertetl.flows.progress import RunProgress
from bertetl.flows.publish import finish_run, flow_run_parent
from bertetl.flows.tasks import (
    enrich_chunk_task,
    enrich_files_task,
    quiet_user_errors,
    retry_transient,
    with_retries,
)
from bertetl.io.chunks import Chunk, assemble, plan_chunks
from bertetl.io.destinations import Destination, parse_run
from bertetl.io.paths import check_run_paths
from bertetl.io.sink import SinkFactory
from bertetl.io.sources import source_capabilities
from bertetl.io.vector_index import IndexSpec
from bertetl.observe import observe_run
from bertetl.results import EnrichReport, FileResult, SummaryRow
from bertetl.runs.enrich import check_storage, enrich
from bertetl.runs.staging import run_staging


@task(name="assemble-file", cache_policy=NO_CACHE)
def assemble_task(parts: list[Path], target: Path, schema: Any, sink: SinkFactory) -> int:
    """Join a big file's enriched parts into its single output file, through `sink`."""
    return assemble(parts, target, schema, sink)


@task(name="enrich-table", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def enrich_table_task(
    source: str,
    dest: str,
    engine: EngineConfig,
    storage_options: dict[str, str],
    overwrite_foreign: bool = False,
    index: IndexSpec | None = None,
) -> EnrichReport:
    """The whole run where SOURCE or DEST is a table (`bertetl.runs.enrich_tables`): one
    task, as a table DEST is one commit; failed files are in the report, not raised."""
    return enrich(
        source,
        dest,
        engine,
        raise_on_failure=False,
        storage_options=storage_options,
        overwrite_foreign=overwrite_foreign,
        index=index,
    )


def _row(name: str, status: str, results: Sequence[FileResult] = ()) -> dict[str, Any]:
    """One file's summary row (`SummaryRow` as a dict, the flow's result), from the
    results of its chunks."""
    rows = sum(r.rows for r in results)
    failed = sum(r.rows_failed for r in results)
    return SummaryRow(
        name,
        status,
        rows=rows,
        inferred=rows - failed,
        failed=failed,
        truncated=sum(r.rows_truncated for r in results),
        seconds=round(sum(r.seconds for r in results), 3),
        tokens=sum(r.tokens for r in results),
        device_seconds=round(sum(r.device_seconds for r in results), 3),
    ).to_dict()


@flow(name="bertetl-enrich")
def enrich_flow(params: EnrichParams) -> list[dict[str, Any]] | State:
    """Enrich SOURCE into DEST; each file (or row-group range of a big file) is a task."""
    quiet_user_errors()
    title = f"enrich {params.source} -> {params.dest}"
    source, dest = parse_run(
        params.source, params.dest, params.storage_options, params.overwrite_foreign, params.index
    )
    parent = flow_run_parent()
    with observe_run("enrich", source, dest, params.engine, params.observe, parent) as observer:
        rows, failures = _enrich(params, source, dest, title)
        observer.summary_rows(rows)
        if failures:
            observer.failure = f"{len(failures)} file(s) failed: " + "; ".join(
                f"{name}: {cause}" for name, cause in failures.items()
            )
    return finish_run(title, rows, failures, cost_per_hour=params.observe.cost_per_hour)


def _enrich(
    params: EnrichParams, source: Any, dest: Destination, title: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The run: its summary rows and its failures (file -> cause)."""
    logger = get_run_logger()
    if source_capabilities(source).pinned or not dest.capabilities.files:
        task_fn = with_retries(enrich_table_task, params.run)
        report = task_fn(
            params.source,
            params.dest,
            params.engine,
            params.storage_options,
            params.overwrite_foreign,
            params.index,
        )
        # a DEST committed whole: when a file failed, none was committed
        rows = [_row(f.source, "committed" if f.dest else "failed", [f]) for f in report.files]
        failures = report.failures
        if failures and not dest.capabilities.files:
            failures |= {
                f.source: f"not committed: {dest} is replaced whole, and another file failed"
                for f in report.files
                if f.error is None
            }
        return rows, failures
    files = check_run_paths(source, dest.place)  # before DEST is locked or written
    executor = make_executor(params.engine)
    check_storage(executor, source, dest)
    pipeline = executor.pipeline
    lock_dir, only_file = dest.root_for(source)
    lock_dir.check()  # not inside another run's DEST, nor holding one
    rows: list[dict[str, Any]] = []
    with lock_dir.lock():
        lock_dir.clean_leftovers(only_file)
        chunks, failures = plan_chunks(
            files, source, dest.place, pipeline.check_file, params.chunk_rows
        )
        for path, cause in failures.items():
            logger.error("%s failed its checks: %s", path, cause)
            rows.append(_row(path, "failed"))
        progress = RunProgress(
            sum(c.rows for c in chunks), title, logger, bar=params.run.progress_bar
        )
        if chunks:
            executor.setup()
        if executor.capabilities.group_rows is not None:  # starts up per call: one call
            try:
                rows += _enrich_files(executor, chunks, lock_dir, params, progress, failures)
            finally:
                executor.teardown()
            progress.finish()
            return rows, failures
        try:
            rows += _enrich_chunks(executor, chunks, lock_dir, params, progress, failures)
        finally:
            executor.teardown()
        progress.finish()
    return rows, failures


def _enrich_chunks(
    executor: Executor,
    chunks: list[Chunk],
    lock_dir: Destination,
    params: EnrichParams,
    progress: RunProgress,
    failures: dict[str, str],
) -> list[dict[str, Any]]:
    """One retried task per chunk; a file cut into several chunks is assembled into its one
    output. Summary rows per file, failed files added to `failures`."""
    logger = get_run_logger()
    task_fn = with_retries(enrich_chunk_task, params.run)
    by_file: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_file.setdefault(chunk.file.path, []).append(chunk)
    rows = []
    with lock_dir.staging() as staging:
        for path, file_chunks in by_file.items():
            try:
                done = [task_fn(executor, chunk, staging, progress) for chunk in file_chunks]
                if len(file_chunks) > 1:
                    first = file_chunks[0]
                    assemble_task(
                        [c.part_path(staging) for c in file_chunks],
                        first.target,
                        executor.pipeline.output_schema(first.schema),
                        lock_dir.sink,
                    )
            except Exception as e:
                failures[path] = str(e)
                logger.error("%s failed: %s", path, e)
                rows.append(_row(path, "failed"))
                continue
            rows.append(_row(path, "committed", done))
    return rows


def _enrich_files(
    executor: Executor,
    chunks: list[Chunk],
    lock_dir: Destination,
    params: EnrichParams,
    progress: RunProgress,
    failures: dict[str, str],
) -> list[dict[str, Any]]:
    """Every file in one retried task and one executor call (executors that start up per
    call); summary rows per file, failed files added to `failures`."""
    logger = get_run_logger()
    jobs = [Job(c.file, c.target, c.schema, sink=lock_dir.sink) for c in chunks if c.part == 0]
    if not jobs:
        return []
    task_fn = with_retries(enrich_files_task, params.run)
    with run_staging(executor, lock_dir) as scratch:
        results = task_fn(executor, jobs, scratch, progress)
    rows = []
    for result in results:
        if result.error is not None:
            failures[result.source] = result.error
            logger.error("%s failed: %s", result.source, result.error)
            rows.append(_row(result.source, "failed"))
        else:
            rows.append(_row(result.source, "committed", [result]))
    return rows
