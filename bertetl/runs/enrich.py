"""Enrich every file of a SOURCE into DEST (`bertetl enrich`): check, lock, run, report."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.engine.remote_models import with_storage_options
from bertetl.errors import ExecutorError, FilesFailedError, InputError
from bertetl.executors import Executor, Job, make_executor
from bertetl.io.destinations import as_destination, parse_run
from bertetl.io.paths import check_run_paths
from bertetl.io.read import SourceFile, check_text_column, read_schema
from bertetl.io.sources import source_capabilities
from bertetl.io.vector_index import IndexSpec
from bertetl.results import EnrichReport, FileResult, merge_label_counts
from bertetl.runs.staging import run_staging


def enrich(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    config: EngineConfig,
    on_file_done: Callable[[FileResult], None] | None = None,
    raise_on_failure: bool = True,
    storage_options: dict[str, str] | None = None,
    overwrite_foreign: bool = False,
    index: IndexSpec | None = None,
) -> EnrichReport:
    """Enrich every Parquet file under `source` into the same layout under `dest`.

    Schemas are checked (text column present and textual) before any model loads. A file
    that cannot be read fails alone: its output is not written, the others are committed,
    and `FilesFailedError` is raised at the end (unless `raise_on_failure` is false).

    SOURCE and DEST may be object-store URIs (`s3://bucket/prefix`), opened with
    `storage_options` (docs/STORAGE.md): each output object is uploaded whole. `index`: the
    vector index DEST builds (`--index`, docs/VECTOR_STORES.md).
    """
    started = time.perf_counter()
    source, destination = parse_run(source, dest, storage_options, overwrite_foreign, index)
    config = with_storage_options(config, storage_options)  # for models on object stores
    if source_capabilities(source).pinned or not destination.capabilities.files:
        from bertetl.runs.enrich_tables import enrich_with_tables

        report = enrich_with_tables(
            source, destination, config, enrich, on_file_done, raise_on_failure
        )
        report.seconds = time.perf_counter() - started
        return report
    files = check_run_paths(source, destination.place)  # before DEST is locked or written
    report = EnrichReport()
    schemas = _check_schemas(files, config.text_column, report)
    executor = make_executor(config)
    check_storage(executor, source, destination)
    for path, schema in schemas.items():
        try:
            executor.pipeline.output_schema(schema)  # name clashes fail before any model loads
        except InputError as e:
            raise InputError(f"{path}: {e}") from e
    jobs = [
        Job(
            file,
            destination.output_target(file, source),
            schemas[file.path],
            sink=destination.sink,
        )
        for file in files
        if file.path in schemas
    ]
    destination.check_outputs_replaceable([job.target for job in jobs])
    root, only_file = destination.root_for(source)
    root.check()  # not inside another run's DEST, nor holding one
    with root.lock():
        root.clean_leftovers(only_file)
        executor.setup()
        stopped = True
        try:
            with run_staging(executor, root) as scratch:
                results = executor.run_jobs(jobs, scratch=scratch)
            executor.collect(report)
            stopped = False
        finally:
            executor.teardown()
            if stopped:  # Ctrl-C or a failure: the temp files of files being written go now
                with contextlib.suppress(OSError):
                    root.clean_leftovers(only_file)
    for result in results:
        report.files.append(result)
        if result.error is None:  # the labels of committed files only
            merge_label_counts(report.label_counts, result.label_counts)
        if on_file_done is not None:
            on_file_done(result)
    report.files.sort(key=lambda f: f.source)
    report.seconds = time.perf_counter() - started
    if raise_on_failure and report.failures:
        raise FilesFailedError(report.failures, report)
    return report


def _check_schemas(
    files: list[SourceFile], text_column: str, report: EnrichReport
) -> dict[str, pa.Schema]:
    """Each readable file's schema, by path, once its text column is checked; a file that
    fails is a failed result in `report`. When every file fails, the first error is raised."""
    schemas: dict[str, pa.Schema] = {}
    errors: list[InputError] = []
    for file in files:
        try:
            schema = read_schema(file)
            check_text_column(file, schema, text_column)
            schemas[file.path] = schema
        except InputError as e:
            errors.append(e)
            report.files.append(FileResult(file.path, None, error=str(e)))
    if not schemas:
        raise errors[0]
    return schemas


def check_storage(executor: Executor, source: object, dest: object) -> None:
    """Refuse (`ExecutorError`) an object-store SOURCE or DEST for an executor that cannot
    read and write one (`Capabilities.object_storage`)."""
    needs = (
        (source, source_capabilities(source).object_storage),
        (dest, as_destination(dest).capabilities.object_storage),
    )
    remote = next((str(side) for side, remote in needs if remote), None)
    if remote is not None and not executor.capabilities.object_storage:
        raise ExecutorError(
            f"{remote}: --executor {executor.config.executor.kind} does not read or write "
            "object storage yet; use --executor local (the default)"
        )
