"""A keyed run (`--key` on enrich and incremental): check, lock, plan, infer, write, commit,
report. `--dry-run` stops after the plan."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertetl.config import EngineConfig
from bertetl.errors import ConfigError, InputError
from bertetl.executors import make_executor
from bertetl.io.destinations import Destination, parse_run
from bertetl.io.keys import RECORD_NAME
from bertetl.io.manifest import config_hash
from bertetl.io.read import SourceFile, discover
from bertetl.io.sources import source_capabilities
from bertetl.results import EnrichReport
from bertetl.runs.keyed.plan import (
    KeyedOptions,
    KeyedPlan,
    RunSettings,
    plan_keyed,
    previous_record,
    source_files,
)
from bertetl.runs.keyed.run import (
    Assembly,
    build_index,
    commit_files,
    commit_table,
    infer,
    make_record,
)

#: Rows of each local file a table SOURCE is read into.
STAGED_FILE_ROWS = 1_000_000


@dataclass
class KeyedReport:
    """What a keyed run did (or, `dry_run`, would do): the totals and each input file's."""

    dest: str
    counts: dict[str, int] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    committed: bool = False
    dry_run: bool = False
    #: The dry run's estimate of the model's seconds, and what it is from.
    estimated_model_seconds: float | None = None
    estimate_from: str = ""
    stages: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as `--report FILE.json` writes it: the totals at the top level (`rows`:
        rows written, and `stages`, as every run report has)."""
        return {
            **self.counts,
            "rows": self.counts.get("rows_written", 0),
            "stages": self.stages,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "model_seconds": round(self.model_seconds, 3),
            "committed": self.committed,
            "dry_run": self.dry_run,
            "estimated_model_seconds": self.estimated_model_seconds,
            "dest": self.dest,
            "files": self.files,
        }

    def line(self, kind: str) -> str:
        """The CLI's final line."""
        c = self.counts
        what = "would write" if self.dry_run else "wrote"
        text = (
            f"{kind} --key: {c.get('rows_in', 0):,} rows in; {c.get('rows_inferred', 0):,} "
            f"inferred, {c.get('rows_reused', 0):,} reused, "
            f"{c.get('rows_deduplicated', 0):,} deduplicated, {c.get('rows_deleted', 0):,} "
            f"deleted; {what} {c.get('rows_written', 0):,} rows"
        )
        if not self.dry_run:
            text += f" ({c.get('rows_failed', 0):,} with enrich_error) into {self.dest}"
            if not self.committed:
                text += " (nothing changed: no commit)"
        elif self.estimated_model_seconds is not None:
            text += (
                f"; model time about {self.estimated_model_seconds:.1f} s ({self.estimate_from})"
            )
        return text

    def count_planned(self) -> None:
        """The totals of a dry run without a key, from its `files` (`rows_in`, and
        `rows_inferred`: the rest is reused; no row deduplicated or deleted)."""
        total = sum(f["rows_in"] for f in self.files)
        todo = sum(f["rows_inferred"] for f in self.files)
        self.counts = {
            "rows_in": total,
            "rows_inferred": todo,
            "rows_reused": total - todo,
            "rows_deduplicated": 0,
            "rows_deleted": 0,
            "rows_written": todo,
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _models(config: EngineConfig) -> dict[str, str]:
    from bertetl.runs.plan import model_fingerprints

    return model_fingerprints(config)


def _input_files(source: Any, dest: Destination, work: Path) -> tuple[list[SourceFile], Any]:
    """SOURCE's files, and the root their outputs' names are taken from: a table SOURCE is
    read at its current version into local Parquet files (the root is their folder)."""
    if source_capabilities(source).pinned:
        from bertetl.io import tables

        if dest.overlaps(source):
            raise InputError(f"SOURCE {source} and DEST {dest} are one place")
        snapshot = tables.pin(source)
        folder = work / "source"
        folder.mkdir()
        tables.materialize_all(snapshot, folder, STAGED_FILE_ROWS)
        return discover(folder), folder
    if dest.capabilities.files:
        from bertetl.io.paths import check_run_paths

        return check_run_paths(source, dest.place), source
    if dest.overlaps(source):
        raise InputError(f"SOURCE {source} and DEST {dest} are one place")
    return discover(source), source


def _estimate(plan: KeyedPlan) -> tuple[float | None, str]:
    """The model's seconds for the rows to infer, at the last keyed run's measured rate."""
    previous = plan.previous
    inferred = plan.total("inferred")
    if previous is None or not previous.counts.get("rows_inferred") or not previous.model_seconds:
        return None, "no earlier keyed run to measure a rate from"
    rate = previous.counts["rows_inferred"] / previous.model_seconds
    return inferred / rate, f"at the last run's {rate:,.0f} rows/s"


def dry_run_files(source: Any, dest: Any, storage_options: dict[str, str] | None) -> KeyedReport:
    """A dry run without a key: every row of SOURCE is inferred (from the files' footers)."""
    from bertetl.io.read import read_metadata

    started = time.perf_counter()
    source, destination = parse_run(source, dest, storage_options)
    report = KeyedReport(str(destination.uri), dry_run=True)
    if source_capabilities(source).pinned:
        from bertetl.io import tables

        snapshot = tables.pin(source)
        reader = tables.open_table(snapshot.ref).all_batches(snapshot.version)
        rows = sum(batch.num_rows for batch in reader)
        report.files = [{"file": str(source), "rows_in": rows, "rows_inferred": rows}]
    else:
        for file in discover(source):
            rows = read_metadata(file).num_rows
            report.files.append({"file": file.relative, "rows_in": rows, "rows_inferred": rows})
    report.count_planned()
    report.estimate_from = "no key: every row is inferred"
    report.seconds = time.perf_counter() - started
    return report


def run_keyed(
    source: Any,
    dest: Any,
    config: EngineConfig,
    options: KeyedOptions | None,
    dry_run: bool = False,
    storage_options: dict[str, str] | None = None,
    overwrite_foreign: bool = False,
    index: Any = None,
) -> KeyedReport:
    """Enrich SOURCE into DEST by key (see `bertetl.runs.keyed`); `options` None: a dry run
    without a key (`dry_run_files`)."""
    if options is None:
        return dry_run_files(source, dest, storage_options)
    if config.emits_windows:  # its outputs are assembled per row, by text fingerprint
        raise ConfigError(f"--emit {config.emit} with --key is not supported yet; leave --key out")
    started = time.perf_counter()
    source, destination = parse_run(source, dest, storage_options, overwrite_foreign, index)
    destination.check()
    if not destination.capabilities.files and not destination.capabilities.merge_by_key:
        raise InputError(f"{destination.uri}: this kind of DEST cannot merge rows by key")
    executor = make_executor(config)
    from bertetl.runs.enrich import check_storage

    check_storage(executor, source, destination)
    models = _models(config)
    chash = config_hash(config, models)
    report = KeyedReport(str(destination.uri), dry_run=dry_run)
    with destination.lock():
        destination.clean_leftovers()
        with destination.staging() as scratch:
            files, root = _input_files(source, destination, scratch)
            # unchanged inputs (size and mtime as recorded) are not hashed again
            listed = source_files(files, previous_record(destination))
            schemas = {file.path: executor.pipeline.check_file(file) for file, _, _ in listed}
            if not destination.capabilities.files:
                destination.check_foreign([])
            settings = RunSettings(options, config.text_column, config.prefix, chash, models)
            plan = plan_keyed(listed, destination, root, settings, scratch)
            if destination.capabilities.files:  # a run replaces only what bertetl wrote
                destination.check_outputs_replaceable([f.target for f in plan.files if f.write])
            report.counts = plan.counts()
            report.files = [item.counts() for item in plan.files]
            if dry_run:
                report.estimated_model_seconds, report.estimate_from = _estimate(plan)
                report.seconds = time.perf_counter() - started
                return report
            run_report = EnrichReport()
            model_started = time.perf_counter()
            inferred = infer(plan, executor, scratch, run_report)
            report.model_seconds = time.perf_counter() - model_started if inferred else 0.0
            report.stages = {name: asdict(c) for name, c in run_report.stages.items()}
            tokenize = run_report.stages.get("tokenize")
            report.tokens = tokenize.real_tokens if tokenize is not None else 0
            added = executor.pipeline.added_fields()
            index = build_index(plan, destination, added, inferred, scratch)
            assembly = Assembly(plan, destination, index, added)
            if destination.capabilities.files:
                if plan.changes or plan.previous is None:
                    commit_files(plan, assembly, schemas)
                    report.counts["rows_failed"] = assembly.failed
                    made = make_record(plan, report.counts, report.model_seconds)
                    destination.write_record(RECORD_NAME, made.model_dump_json())
                    report.committed = True
            else:
                staged = scratch / "upserts"
                staged.mkdir()

                def record() -> str:
                    report.counts["rows_failed"] = assembly.failed
                    return make_record(plan, report.counts, report.model_seconds).model_dump_json()

                report.committed = commit_table(plan, assembly, schemas, staged, record)
            report.counts.setdefault("rows_failed", assembly.failed)
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["KeyedOptions", "KeyedReport", "run_keyed"]
