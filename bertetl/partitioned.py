"""Enrich a partitioned table partition by partition: plan, skip, reuse rows, commit atomically.

The engine side of the backfill and incremental flows, usable without Prefect:
`plan_partitions()` compares each source partition with the manifest committed under DEST
(`sql/partitions_to_run.sql` decides), and `enrich_partition()` enriches one partition into
a staged folder, writes its manifest last and swaps it in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import polars as pl
import pyarrow as pa

from bertetl.commit import staged_folder, swap_in
from bertetl.config import EngineConfig
from bertetl.errors import BertEtlError, CommitError, InputError, TransientError
from bertetl.manifest import (
    MANIFEST_NAME,
    FileFingerprint,
    Manifest,
    config_hash,
    fingerprint_file,
    inputs_fingerprint,
    model_fingerprint,
    read_manifest,
    write_manifest,
)
from bertetl.models import resolve_model_dir
from bertetl.partitions import Partition, dest_folder, list_partitions
from bertetl.pipeline import FileResult, Job, Pipeline, merge_label_counts
from bertetl.reuse import ReuseIndex
from bertetl.sql import run_query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionPlan:
    """One partition's planned action ('enrich', 'skip', 'orphan') and why."""

    column: str
    value: str
    action: str
    reason: str
    partition: Partition | None = None
    inputs: tuple[FileFingerprint, ...] = ()
    previous: Manifest | None = None

    @cached_property
    def rows(self) -> int:
        """Rows in the partition's input files, from their footers, read once (an unreadable
        footer counts 0 here; enriching the partition then fails naming the file)."""
        import pyarrow.parquet as pq

        total = 0
        for file in self.partition.files if self.partition is not None else ():
            try:
                total += pq.read_metadata(file.path).num_rows
            except (pa.ArrowException, OSError):
                continue
        return total


@dataclass
class Plan:
    """What a run over a partitioned source will do."""

    models: dict[str, str]
    config_hash: str
    partitions: list[PartitionPlan] = field(default_factory=list)

    def by_action(self, action: str) -> list[PartitionPlan]:
        return [p for p in self.partitions if p.action == action]


def model_fingerprints(config: EngineConfig) -> dict[str, str]:
    """Fingerprints of the configured models, by role (`embed`, `classify`)."""
    specs = {"embed": config.embed_model, "classify": config.classify_model}
    return {
        role: model_fingerprint(resolve_model_dir(spec, config.allow_pickle))
        for role, spec in specs.items()
        if spec
    }


def _committed_manifests(dest: Path, column: str) -> dict[str, Manifest]:
    found: dict[str, Manifest] = {}
    if not dest.is_dir():
        return found
    for path in sorted(dest.rglob(MANIFEST_NAME)):
        if any(part.startswith(".") for part in path.relative_to(dest).parts):
            continue
        manifest = read_manifest(path.parent)
        if manifest is not None and manifest.partition_column == column:
            found[manifest.partition] = manifest
    return found


def plan_partitions(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    column: str,
    config: EngineConfig,
    start: str | None = None,
    end: str | None = None,
    force: bool = False,
) -> Plan:
    """Compare the source's partitions in [start, end] with DEST's manifests.

    Input files are fingerprinted by size, mtime and SHA-256 (re-hashed only when size or
    mtime moved since the manifest), so a touched but identical file is not re-enriched.
    """
    models = model_fingerprints(config)
    plan = Plan(models, config_hash(config, models))
    partitions = {p.value: p for p in list_partitions(source, column, start, end)}
    committed = {
        value: manifest
        for value, manifest in _committed_manifests(Path(dest), column).items()
        if (start is None or value >= start) and (end is None or value <= end)
    }
    inputs: dict[str, tuple[FileFingerprint, ...]] = {}
    for value, partition in partitions.items():
        known = {f.relative: f for f in committed[value].inputs} if value in committed else {}
        inputs[value] = tuple(
            fingerprint_file(f.path, partition.relative(f), known.get(partition.relative(f)))
            for f in partition.files
        )
    source_table = pl.DataFrame(
        {
            "partition": list(partitions),
            "input_fingerprint": [inputs_fingerprint(list(inputs[v])) for v in partitions],
        },
        schema={"partition": pl.String, "input_fingerprint": pl.String},
    )
    manifest_table = pl.DataFrame(
        {
            "partition": list(committed),
            "input_fingerprint": [m.input_fingerprint for m in committed.values()],
            "config_hash": [m.config_hash for m in committed.values()],
        },
        schema={"partition": pl.String, "input_fingerprint": pl.String, "config_hash": pl.String},
    )
    decided = run_query(
        "partitions_to_run",
        {"source": source_table, "manifests": manifest_table},
        {"config_hash": plan.config_hash, "force": force},
    )
    for row in decided.iter_rows(named=True):
        value = row["partition"]
        plan.partitions.append(
            PartitionPlan(
                column,
                value,
                row["action"],
                row["reason"],
                partitions.get(value),
                inputs.get(value, ()),
                committed.get(value),
            )
        )
    return plan


@dataclass
class StagedPartition:
    """A partition being enriched: its jobs write into `staged`, swapped in at commit."""

    item: PartitionPlan
    staged: Path
    target: Path
    manifest: Manifest
    jobs: list[Job]
    started: float

    @classmethod
    def prepare(
        cls, pipeline: Pipeline, item: PartitionPlan, dest: Path, plan: Plan, staged: Path
    ) -> StagedPartition:
        """Check the partition's files (`InputError` naming the file) and plan their jobs."""
        partition = item.partition
        if partition is None:
            raise InputError(f"partition {item.column}={item.value} has no source files")
        started = time.perf_counter()
        manifest = Manifest(
            partition_column=partition.column,
            partition=partition.value,
            inputs=list(item.inputs),
            models=plan.models,
            config_hash=plan.config_hash,
            started=datetime.now(UTC).isoformat(),
        )
        jobs = [
            (file, staged / partition.relative(file), pipeline.check_file(file))
            for file in partition.files
        ]
        return cls(item, staged, dest_folder(dest, partition), manifest, jobs, started)

    def commit(self, results: list[FileResult]) -> Manifest:
        """Account every row, write the manifest last and swap the partition in; a failed
        file fails the partition (`TransientError` when a retry may help, else
        `InputError`), and a row count mismatch is a `CommitError`."""
        partition, manifest = self.item.partition, self.manifest
        for (file, _, _), result in zip(self.jobs, results, strict=False):
            if result.error is not None:
                error = TransientError if result.retryable else InputError
                raise error(f"partition {partition.folder} failed: {result.error}")
            manifest.rows_out += result.rows
            manifest.rows_failed += result.rows_failed
            manifest.rows_reused += result.rows_reused
            manifest.outputs.append(partition.relative(file))
            merge_label_counts(manifest.label_counts, result.label_counts)
        manifest.rows_in = self.item.rows
        if manifest.rows_out != manifest.rows_in:
            raise CommitError(
                f"partition {partition.folder}: {manifest.rows_in} rows in but "
                f"{manifest.rows_out} written; not committed"
            )
        manifest.rows_inferred = manifest.rows_out - manifest.rows_reused - manifest.rows_failed
        manifest.finished = datetime.now(UTC).isoformat()
        manifest.seconds = round(time.perf_counter() - self.started, 3)
        write_manifest(self.staged, manifest)
        swap_in(self.staged, self.target)
        return manifest


def enrich_partition(
    pipeline: Pipeline,
    item: PartitionPlan,
    dest: str | os.PathLike[str],
    plan: Plan,
    reuse: bool = True,
    on_rows: Callable[[int], None] | None = None,
) -> Manifest:
    """Enrich one planned partition into DEST and commit it atomically with its manifest.

    With `reuse`, rows whose text is unchanged since the partition's last commit (same model
    and config) take their earlier outputs. Any file failing fails the whole partition
    (`InputError`), leaving the committed version untouched. `on_rows(n)` reports progress.
    """
    config = pipeline.config
    with staged_folder(dest) as staged, staged_folder(dest) as scratch:
        work = StagedPartition.prepare(pipeline, item, Path(dest), plan, staged)
        index = None
        previous = item.previous
        if (
            reuse
            and pipeline.reuses_rows
            and previous is not None
            and previous.config_hash == plan.config_hash
        ):
            index = ReuseIndex.build(
                (work.target / name for name in previous.outputs),
                config.text_column,
                pipeline.added_fields(),
                pipeline.validate.error_column,
                scratch,
            )
            if index is not None:
                log.info("%s: %d earlier rows can be reused", item.partition.folder, len(index))
        results = pipeline.run_files(
            work.jobs, reuse=index, on_rows=on_rows, stop_at_error=True, scratch=scratch
        )
        return work.commit(results)


@dataclass
class PartitionOutcome:
    """One partition of a group: its committed manifest, or why it failed."""

    item: PartitionPlan
    manifest: Manifest | None = None
    error: Exception | None = None


def enrich_partitions(
    pipeline: Pipeline,
    items: list[PartitionPlan],
    dest: str | os.PathLike[str],
    plan: Plan,
    on_rows: Callable[[int], None] | None = None,
) -> list[PartitionOutcome]:
    """Enrich a group of partitions in one `run_files()` (the Ray executor: its actor pools
    start once for the group), then commit each partition alone: a failed file fails only
    its partition. No row reuse (the Ray executor sends every row to the models)."""
    outcomes = {item.value: PartitionOutcome(item) for item in items}
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(staged_folder(dest))
        staged: list[StagedPartition] = []
        for item in items:
            folder = stack.enter_context(staged_folder(dest))
            try:
                staged.append(StagedPartition.prepare(pipeline, item, Path(dest), plan, folder))
            except BertEtlError as e:
                outcomes[item.value].error = e
        jobs = [job for work in staged for job in work.jobs]
        results = pipeline.run_files(jobs, on_rows=on_rows, scratch=scratch)
        start = 0
        for work in staged:
            mine, start = results[start : start + len(work.jobs)], start + len(work.jobs)
            try:
                outcomes[work.item.value].manifest = work.commit(mine)
            except BertEtlError as e:
                outcomes[work.item.value].error = e
    return [outcomes[item.value] for item in items]


def group_partitions(items: list[PartitionPlan], max_rows: int) -> list[list[PartitionPlan]]:
    """Consecutive partitions in groups of at most `max_rows` rows (a bigger partition is a
    group of its own)."""
    groups: list[list[PartitionPlan]] = []
    rows = 0
    for item in items:
        if groups and rows + item.rows <= max_rows:
            groups[-1].append(item)
            rows += item.rows
        else:
            groups.append([item])
            rows = item.rows
    return groups
