"""`bertetl enrich` with a Delta Lake or Iceberg table as SOURCE or DEST.

- A table SOURCE is read at one version (Delta) or snapshot (Iceberg), the whole table with its
  partition columns, streamed into a local Parquet file that is then enriched as any file (in
  a scratch folder that the next run removes if this one is killed: `bertetl.io.scratch`).
- A table DEST is written in ONE table transaction that replaces all of its rows (Delta: an
  overwrite; Iceberg: a delete and the appends in one transaction), from outputs staged on
  this machine, with a record of the run (source, version, rows, config hash) in the commit's
  metadata. Readers see the old rows or the new ones; a rerun replaces, never duplicates.
  When any file fails, nothing is committed and the table stays as it was.
- A DEST table partitioned by a column is refused: `bertetl backfill` commits it one partition
  at a time, with manifests, and skips what did not change.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bertetl.config import EngineConfig
from bertetl.errors import FilesFailedError, InputError
from bertetl.io.destinations import Destination
from bertetl.io.manifest import config_hash
from bertetl.io.scratch import run_scratch
from bertetl.io.sources import check_source, source_capabilities
from bertetl.io.stores.locations import Location, TableRef
from bertetl.results import EnrichReport, FileResult

if TYPE_CHECKING:
    from bertetl.io.tables import TableSnapshot

#: Rows per local file a table SOURCE is staged into (each file is one job of the executor).
STAGED_FILE_ROWS = 1_000_000

#: The run's own record in the DEST table's commit metadata (`bertetl.io.tables.MANIFEST_KEY`).
RUN_KIND = "enrich"


def enrich_with_tables(
    source: str | os.PathLike[str] | Location | TableRef,
    dest: Destination,
    config: EngineConfig,
    run_files: Callable[..., EnrichReport],
    on_file_done: Callable[[FileResult], None] | None = None,
    raise_on_failure: bool = True,
) -> EnrichReport:
    """Enrich where SOURCE or DEST (or both) is a table; `run_files(source, dest, config,
    on_file_done=..., raise_on_failure=...)` is the Parquet run it stages through."""
    _check(source, dest)
    with contextlib.ExitStack() as stack:
        local_source: str | os.PathLike[str] | Location | TableRef = source
        version = None
        if source_capabilities(source).pinned:
            from bertetl.io import tables

            snapshot = tables.pin(source)  # type: ignore[arg-type]  # the one version read
            work = stack.enter_context(run_scratch("enrich-"))  # gone with the run, even killed
            local_source, version = _stage_source(snapshot, work), snapshot.version
        if dest.capabilities.files:
            report = run_files(
                local_source, dest, config, on_file_done=None, raise_on_failure=False
            )
            return _finish(report, source, on_file_done, raise_on_failure, None)
        with dest.lock():
            dest.clean_leftovers()
            with dest.staging() as staged:
                out = staged / "out"
                report = run_files(
                    local_source, out, config, on_file_done=None, raise_on_failure=False
                )
                if not report.failures:
                    rows = sum(f.rows for f in report.files)
                    record = {
                        "run": RUN_KIND,
                        "source": str(source),
                        "source_version": version,
                        "rows": rows,
                        "config_hash": config_hash(config, _models(config)),
                    }
                    # the outputs the run committed, whatever their names (not a glob)
                    files = [Path(f.dest) for f in report.files if f.dest is not None]
                    dest.replace_all(out, files, rows, json.dumps(record, sort_keys=True))
        for result in report.files:  # the staged outputs are gone: the table holds the rows
            result.dest = str(dest) if not report.failures and result.error is None else None
        return _finish(report, source, on_file_done, raise_on_failure, dest)


def _check(source: object, dest: Destination) -> None:
    """Both tables reachable (their packages and catalogs), not one table, and a DEST that
    can take a whole run in one commit (a table that is not partitioned)."""
    if dest.overlaps(source):
        raise InputError(
            f"SOURCE {source} and DEST {dest} are one table, or one lies inside the other; a "
            "run never writes its input"
        )
    check_source(source)
    dest.check()
    if not dest.capabilities.files:
        dest.check_replace_all()


def _stage_source(snapshot: TableSnapshot, work: Path) -> Path:
    """The pinned table, streamed into `work/source/`: one file `<table>.parquet` (returned:
    DEST is then a folder for it, or a `.parquet` file, as for any one input file), or, past
    STAGED_FILE_ROWS rows, several files (the folder returned), one job each, so `--workers`
    processes share a big table."""
    from bertetl.io import tables

    folder = work / "source"
    folder.mkdir()
    files = tables.materialize_all(snapshot, folder, STAGED_FILE_ROWS)
    return files[0] if len(files) == 1 else folder


def _models(config: EngineConfig) -> dict[str, str]:
    from bertetl.runs.plan import model_fingerprints

    return model_fingerprints(config)


def _finish(
    report: EnrichReport,
    source: object,
    on_file_done: Callable[[FileResult], None] | None,
    raise_on_failure: bool,
    dest_table: Destination | None,
) -> EnrichReport:
    """Name the table, not its staged copy, as each file's source; then report as
    `bertetl.runs.enrich.enrich` does (a DEST table: nothing committed when a file failed)."""
    if source_capabilities(source).pinned:
        for result in report.files:
            result.source = str(source)
    for result in report.files:
        if on_file_done is not None:
            on_file_done(result)
    if raise_on_failure and report.failures:
        if dest_table is None:
            raise FilesFailedError(report.failures, report)
        raise FilesFailedError(
            report.failures,
            report,
            f"{dest_table} was left as it was (a table is committed whole, never without a file)",
        )
    return report
