"""Enrich planned partitions: each into a staged folder, its manifest written last, then
swapped in whole; unchanged rows reuse their earlier outputs.

The engine side of the backfill and incremental flows, usable without Prefect (the plan is
`bertetl.runs.plan`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from bertetl.engine.pipeline import Pipeline
from bertetl.engine.reuse import ReuseIndex
from bertetl.errors import BertEtlError, CommitError, InputError, TransientError
from bertetl.executors import Executor, Job
from bertetl.io.destinations import Destination, as_destination, overlaps
from bertetl.io.manifest import EmbeddingMean, Manifest, ScoreMean, fingerprint_output
from bertetl.io.partitions import Partition
from bertetl.io.run_checks import (
    check_partition_paths,
    check_partitioned_run,
    materialize_partition,
)
from bertetl.results import ColumnSum, FileResult, merge_column_sums, merge_label_counts
from bertetl.runs.plan import PartitionPlan, Plan
from bertetl.runs.staging import on_every_node, run_staging

log = logging.getLogger(__name__)


@dataclass
class StagedPartition:
    """A partition being enriched: its jobs write into `staged`, swapped in at commit."""

    item: PartitionPlan
    partition: Partition
    #: Where the partition is committed (`Destination.commit_partition`).
    destination: Destination
    staged: Path
    #: The partition's place in DEST (`Destination.partition_target`): its folder, or the
    #: table.
    target: Any
    manifest: Manifest
    jobs: list[Job]
    started: float
    #: What bertetl may replace in `target` (`owned_files`); anything else is never deleted.
    owned: frozenset[str] = field(default_factory=frozenset)
    #: The partition's rows when counted here (a table SOURCE's partition, read into a
    #: local file); else the plan's count (`PartitionPlan.rows`).
    rows_in: int | None = None

    @classmethod
    def prepare(
        cls,
        pipeline: Pipeline,
        item: PartitionPlan,
        dest: Any,
        plan: Plan,
        staged: Any,
        inputs: Path | None = None,
    ) -> StagedPartition:
        """Check the partition's paths (its DEST folder is outside its SOURCE and holds
        nothing bertetl did not write) and files (`InputError` naming the file or path), and
        plan their jobs. A table SOURCE's partition is first read into a local Parquet file
        in `inputs` (`bertetl.io.tables.materialize`)."""
        partition = item.partition
        if partition is None:
            raise InputError(f"partition {item.column}={item.value} has no source files")
        destination = as_destination(dest)
        partition, rows_in = materialize_partition(partition, inputs or staged.parent)
        if destination.capabilities.files:
            check_partition_paths(partition, destination.place)
        owned = destination.check_foreign([partition])[partition.value]
        target = destination.partition_target(partition)
        started = time.perf_counter()
        manifest = Manifest(
            partition_column=partition.column,
            partition=partition.value,
            inputs=list(item.inputs),
            models=plan.models,
            config_hash=plan.config_hash,
            started=datetime.now(UTC).isoformat(),
            emit=pipeline.config.emit,
        )
        jobs = [
            Job(
                file,
                staged / partition.relative(file),
                pipeline.check_file(file),
                sink=destination.sink,
            )
            for file in partition.files
        ]
        return cls(
            item, partition, destination, staged, target, manifest, jobs, started, owned, rows_in
        )

    def commit(self, results: list[FileResult]) -> Manifest:
        """Account every row, fingerprint each output (size, mtime, SHA-256, footer rows),
        pool the files' label counts, mean embedding and mean score, write the manifest last
        and swap the partition in; a failed file fails the partition (`TransientError` when
        a retry may help, else `InputError`), and a row count mismatch is a `CommitError`."""
        partition, manifest = self.partition, self.manifest
        embedding_sums: dict[str, ColumnSum] = {}
        score_sums: dict[str, ColumnSum] = {}
        rows_read = 0  # input rows the outputs account for (= rows_out unless --emit windows)
        for job, result in zip(self.jobs, results, strict=False):
            if result.error is not None:
                error = TransientError if result.retryable else InputError
                raise error(f"partition {partition.folder} failed: {result.error}")
            manifest.rows_out += result.rows
            rows_read += result.rows_read
            manifest.rows_failed += result.rows_failed
            manifest.rows_reused += result.rows_reused
            manifest.rows_truncated += result.rows_truncated
            manifest.tokens += result.tokens
            manifest.device_seconds += result.device_seconds
            relative = partition.relative(job.file)
            try:
                output = fingerprint_output(job.target, relative)
            except (pa.ArrowException, OSError) as e:
                raise CommitError(f"cannot read back output {job.target}: {e}") from e
            if output.rows != result.rows:
                raise CommitError(
                    f"partition {partition.folder}: {job.target} holds {output.rows} rows "
                    f"but {result.rows} were written; not committed"
                )
            manifest.outputs.append(relative)
            manifest.output_files.append(output)
            merge_label_counts(manifest.label_counts, result.label_counts)
            merge_column_sums(embedding_sums, result.embedding_sums)
            merge_column_sums(score_sums, result.score_sums)
        manifest.embedding_means = {
            name: EmbeddingMean.of(total) for name, total in embedding_sums.items() if total.count
        }
        manifest.score_means = {
            name: ScoreMean.of(total) for name, total in score_sums.items() if total.count
        }
        manifest.rows_in = self.item.rows if self.rows_in is None else self.rows_in
        if rows_read != manifest.rows_in or manifest.rows_out < rows_read:
            written = f"{manifest.rows_out} written" + (
                f" for {rows_read} read" if rows_read != manifest.rows_out else ""
            )
            raise CommitError(
                f"partition {partition.folder}: {manifest.rows_in} rows in but {written}; "
                "not committed"
            )
        manifest.rows_inferred = rows_read - manifest.rows_reused - manifest.rows_failed
        manifest.finished = datetime.now(UTC).isoformat()
        manifest.seconds = round(time.perf_counter() - self.started, 3)
        manifest.device_seconds = round(manifest.device_seconds, 3)
        files = [job.target for job in self.jobs]
        return self.destination.commit_partition(
            self.target, self.staged, manifest, self.owned, files
        )


def enrich_partition(
    executor: Executor,
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
    pipeline = executor.pipeline
    config = pipeline.config
    destination = as_destination(dest)
    with contextlib.ExitStack() as stack:
        staged = stack.enter_context(run_staging(executor, destination))
        scratch = stack.enter_context(destination.staging())
        parts = scratch  # where the executor stages its parts: beside the inputs, unless
        if on_every_node(executor, destination):  # nodes that share no disk write them
            parts = stack.enter_context(destination.node_staging())
        work = StagedPartition.prepare(
            pipeline, item, destination, plan, staged, inputs=_inputs_folder(scratch)
        )
        index = None
        previous = item.previous
        if (
            reuse
            and executor.capabilities.reuses_rows
            and previous is not None
            and previous.config_hash == plan.config_hash
        ):
            try:  # only outputs that verified; one damaged beyond its footer is not reused
                index = ReuseIndex.build(
                    _earlier_outputs(work, pipeline, scratch),
                    config.text_column,
                    pipeline.added_fields(),
                    pipeline.validate.error_column,
                    scratch,
                )
            except (pa.ArrowException, OSError) as e:
                log.warning("%s: earlier outputs not reused: %s", work.partition.folder, e)
            if index is not None:
                log.info("%s: %d earlier rows can be reused", work.partition.folder, len(index))
        pipeline.use_embedding_ranges(plan.embedding_ranges)
        results = executor.run_jobs(
            work.jobs, reuse=index, on_rows=on_rows, stop_at_error=True, scratch=parts
        )
        work.manifest.embedding_ranges = plan.embedding_ranges = pipeline.embedding_ranges()
        return work.commit(results)


@dataclass
class PartitionOutcome:
    """One partition of a group: its committed manifest, or why it failed."""

    item: PartitionPlan
    manifest: Manifest | None = None
    error: Exception | None = None


def enrich_partitions(
    executor: Executor,
    items: list[PartitionPlan],
    dest: str | os.PathLike[str],
    plan: Plan,
    on_rows: Callable[[int], None] | None = None,
) -> list[PartitionOutcome]:
    """Enrich a group of partitions in one `run_jobs()` call (for executors that start up per
    call, e.g. actor pools), then commit each partition alone: a failed file fails only its
    partition. No row reuse."""
    outcomes = {item.value: PartitionOutcome(item) for item in items}
    destination = as_destination(dest)
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(run_staging(executor, destination))
        staged: list[StagedPartition] = []
        for item in items:
            folder = stack.enter_context(run_staging(executor, destination))
            inputs = _inputs_folder(stack.enter_context(destination.staging()))
            try:
                staged.append(
                    StagedPartition.prepare(
                        executor.pipeline, item, destination, plan, folder, inputs=inputs
                    )
                )
            except BertEtlError as e:
                outcomes[item.value].error = e
        jobs = [job for work in staged for job in work.jobs]
        results = executor.run_jobs(jobs, on_rows=on_rows, scratch=scratch)
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


def _inputs_folder(scratch: Path) -> Path:
    """Where a table SOURCE's partition is read to (inside a run's scratch folder)."""
    folder = scratch / "table-input"
    folder.mkdir(exist_ok=True)
    return folder


def _earlier_outputs(work: StagedPartition, pipeline: Pipeline, scratch: Path) -> list[Any]:
    """The earlier outputs of the partition whose rows may be reused: the files of its
    last commit that verified, or for a table DEST its rows in the table's current
    snapshot (read into a local file; none when the partition was changed since)."""
    item = work.item
    fields = [pa.field(pipeline.config.text_column, pa.large_string()), *pipeline.added_fields()]
    return work.destination.earlier_outputs(
        work.target, work.partition, item.reusable_outputs, bool(item.damage), fields, scratch
    )


__all__ = ["check_partitioned_run", "overlaps"]  # their home is `bertetl.io`; kept importable
