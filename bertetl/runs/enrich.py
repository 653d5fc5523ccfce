"""Enrich every file of a SOURCE into DEST (`bertetl enrich`): check, lock, run, report."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.errors import ExecutorError, FilesFailedError, InputError
from bertetl.executors import Executor, Job, make_executor
from bertetl.io.commit import clean_leftovers, destination_lock, staging_for
from bertetl.io.partitions import SHOWN_FILES, is_output, remote_files
from bertetl.io.paths import check_run_paths, dest_path, dest_root
from bertetl.io.read import SourceFile, check_text_column, read_schema
from bertetl.io.storage import Location, is_remote, is_table, resolve_run
from bertetl.report import EnrichReport, FileResult, merge_label_counts


def enrich(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    config: EngineConfig,
    on_file_done: Callable[[FileResult], None] | None = None,
    raise_on_failure: bool = True,
    storage_options: dict[str, str] | None = None,
) -> EnrichReport:
    """Enrich every Parquet file under `source` into the same layout under `dest`.

    Schemas are checked (text column present and textual) before any model loads. A file
    that cannot be read fails alone: its output is not written, the others are committed,
    and `FilesFailedError` is raised at the end (unless `raise_on_failure` is false).

    SOURCE and DEST may be object-store URIs (`s3://bucket/prefix`), opened with
    `storage_options` (docs/STORAGE.md): each output object is uploaded whole.
    """
    started = time.perf_counter()
    run_source, run_dest = resolve_run(source, dest, storage_options)
    if is_table(run_source) or is_table(run_dest):
        from bertetl.runs.enrich_tables import enrich_with_tables

        report = enrich_with_tables(
            run_source, run_dest, config, enrich, on_file_done, raise_on_failure
        )
        report.seconds = time.perf_counter() - started
        return report
    source, dest = run_source, run_dest
    if not isinstance(source, Location):
        source = os.fspath(source)
    if not isinstance(dest, Location):
        dest = os.fspath(dest)
    files = check_run_paths(source, dest)  # before DEST is locked or written
    report = EnrichReport()
    schemas = _check_schemas(files, config.text_column, report)
    executor = make_executor(config)
    check_storage(executor, source, dest)
    for path, schema in schemas.items():
        try:
            executor.pipeline.output_schema(schema)  # name clashes fail before any model loads
        except InputError as e:
            raise InputError(f"{path}: {e}") from e
    jobs = [
        Job(file, dest_path(file, source, dest), schemas[file.path])
        for file in files
        if file.path in schemas
    ]
    check_outputs_replaceable(dest, [job.target for job in jobs])
    lock_dir, only_file = dest_root(source, dest)
    with destination_lock(lock_dir):
        clean_leftovers(lock_dir, only_file)
        executor.setup()
        stopped = True
        try:
            with staging_for(lock_dir) as scratch:
                results = executor.run_jobs(jobs, scratch=scratch)
            executor.collect(report)
            stopped = False
        finally:
            executor.teardown()
            if stopped:  # Ctrl-C or a failure: the temp files of files being written go now
                with contextlib.suppress(OSError):
                    clean_leftovers(lock_dir, only_file)
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


def check_outputs_replaceable(dest: object, targets: list[Path | Location]) -> None:
    """Refuse (`InputError`, one line naming them) files at this run's output paths that
    bertetl did not write (`is_output`): an output is replaced by a rerun, and a run deletes
    only what it wrote. On an object store, DEST is listed once, not asked per output."""
    listed: set[str] | None = None  # DEST's objects, relative to it, when any target is below
    if isinstance(dest, Location) and any(_strictly_below(t, dest) for t in targets):
        listed = set(remote_files(dest))
    foreign = []
    for target in targets:
        if listed is not None and isinstance(dest, Location) and _strictly_below(target, dest):
            assert isinstance(target, Location)
            exists = target.relative_to(dest) in listed
        elif isinstance(target, Location) and is_remote(target):
            exists = target.exists()
        else:
            exists = os.path.lexists(target)
        if exists and not is_output(target):
            foreign.append(str(target))
    if foreign:
        more = f" and {len(foreign) - SHOWN_FILES} more" if len(foreign) > SHOWN_FILES else ""
        raise InputError(
            f"{len(foreign)} file(s) bertetl did not write are where this run writes its "
            f"outputs: {', '.join(foreign[:SHOWN_FILES])}{more}; a run replaces only its own "
            "outputs, so move them (or pick another DEST)"
        )


def _strictly_below(target: object, dest: Location) -> bool:
    """Whether `target` is an object-store location inside the object-store `dest`."""
    return (
        isinstance(target, Location)
        and is_remote(target)
        and is_remote(dest)
        and target.is_relative_to(dest)
        and target.path.rstrip("/") != dest.path.rstrip("/")
    )


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
    remote = next((str(p) for p in (source, dest) if is_remote(p)), None)
    if remote is not None and not executor.capabilities.object_storage:
        raise ExecutorError(
            f"{remote}: --executor {executor.config.executor.kind} does not read or write "
            "object storage yet; use --executor local (the default)"
        )
