"""Enrich planned partitions: each into a staged folder, its manifest written last, then
swapped in whole; unchanged rows reuse their earlier outputs.

The engine side of the backfill and incremental flows, usable without Prefect (the plan is
`bertetl.runs.plan`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from bertetl.engine.pipeline import Pipeline
from bertetl.engine.reuse import ReuseIndex
from bertetl.errors import BertEtlError, CommitError, InputError, TransientError
from bertetl.executors import Executor, Job
from bertetl.io.commit import staging_for, swap_in
from bertetl.io.manifest import (
    MANIFEST_NAME,
    EmbeddingMean,
    Manifest,
    ScoreMean,
    fingerprint_output,
    write_manifest,
)
from bertetl.io.partitions import (
    Partition,
    check_foreign_files,
    dest_folder,
    list_partitions,
    remote_files,
)
from bertetl.io.paths import check_paths, check_remote_paths, check_run_paths
from bertetl.io.read import SourceFile
from bertetl.io.storage import Location, TableRef, is_remote, is_table
from bertetl.report import ColumnSum, FileResult, merge_column_sums, merge_label_counts
from bertetl.runs.plan import PartitionPlan, Plan

log = logging.getLogger(__name__)


@dataclass
class StagedPartition:
    """A partition being enriched: its jobs write into `staged`, swapped in at commit."""

    item: PartitionPlan
    partition: Partition
    staged: Path
    #: The live folder: a `Path`, or a `Location` on an object store (committed by
    #: `_commit_to_store` instead of the staged swap).
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
        staged: Path,
        inputs: Path | None = None,
    ) -> StagedPartition:
        """Check the partition's paths (its DEST folder is outside its SOURCE and holds
        nothing bertetl did not write) and files (`InputError` naming the file or path), and
        plan their jobs. A table SOURCE's partition is first read into a local Parquet file
        in `inputs` (`bertetl.io.tables.materialize`)."""
        partition = item.partition
        if partition is None:
            raise InputError(f"partition {item.column}={item.value} has no source files")
        rows_in = None
        if partition.table is not None:
            partition, rows_in = _materialize(partition, inputs or staged.parent)
        if is_table(dest):
            target: Any = dest  # one table transaction at commit; nothing on disk to check
            owned: frozenset[str] = frozenset()
        else:
            if partition.table is None:
                _check_partition_paths(partition, dest)
            owned = check_foreign_files(dest, [partition])[partition.value]
            target = dest_folder(dest, partition)
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
            Job(file, staged / partition.relative(file), pipeline.check_file(file))
            for file in partition.files
        ]
        return cls(item, partition, staged, target, manifest, jobs, started, owned, rows_in)

    def commit(self, results: list[FileResult]) -> Manifest:
        """Account every row, fingerprint each output (size, mtime, SHA-256, footer rows),
        pool the files' label counts, mean embedding and mean score, write the manifest last
        and swap the partition in; a failed file fails the partition (`TransientError` when
        a retry may help, else `InputError`), and a row count mismatch is a `CommitError`."""
        partition, manifest = self.partition, self.manifest
        embedding_sums: dict[str, ColumnSum] = {}
        score_sums: dict[str, ColumnSum] = {}
        for job, result in zip(self.jobs, results, strict=False):
            if result.error is not None:
                error = TransientError if result.retryable else InputError
                raise error(f"partition {partition.folder} failed: {result.error}")
            manifest.rows_out += result.rows
            manifest.rows_failed += result.rows_failed
            manifest.rows_reused += result.rows_reused
            manifest.rows_truncated += result.rows_truncated
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
        if manifest.rows_out != manifest.rows_in:
            raise CommitError(
                f"partition {partition.folder}: {manifest.rows_in} rows in but "
                f"{manifest.rows_out} written; not committed"
            )
        manifest.rows_inferred = manifest.rows_out - manifest.rows_reused - manifest.rows_failed
        manifest.finished = datetime.now(UTC).isoformat()
        manifest.seconds = round(time.perf_counter() - self.started, 3)
        if is_table(self.target):
            return self._commit_to_table(manifest)
        if is_remote(self.target):
            return self._commit_to_store(manifest)
        write_manifest(self.staged, manifest)
        swap_in(self.staged, self.target, owned=self.owned | set(manifest.outputs))
        return manifest

    def _commit_to_table(self, manifest: Manifest) -> Manifest:
        """Commit the staged partition into its table DEST as ONE table transaction that
        replaces exactly this partition, the manifest in the commit's metadata
        (`bertetl.io.tables.commit_partition`). The staged files are not the table's files,
        so the manifest lists no outputs: a table's partition is checked against the commit
        that wrote it instead (`verify_outputs`)."""
        from bertetl.io.tables import commit_partition

        target: TableRef = self.target
        manifest.outputs, manifest.output_files = [], []
        files = [Path(job.target) for job in self.jobs]
        commit_partition(
            target, self.partition.column, self.partition.value, files, manifest.model_dump_json()
        )
        return manifest

    def _commit_to_store(self, manifest: Manifest) -> Manifest:
        """Commit the staged partition to its object-store folder, where nothing renames:

        1. the lock must still be ours (`check_held`);
        2. the old `_manifest.json` is deleted: from here on the partition is uncommitted,
           so a reader following manifests sees it missing, never a mix of old and new;
        3. bertetl's own objects there that the new manifest does not list (outputs of
           files gone from the source, of a killed attempt) are deleted;
        4. each staged output is uploaded whole to its deterministic name (replacing an
           earlier version of the same file; see `upload_file`);
        5. the new manifest is written (one PUT), fingerprints taken from the store: the
           commit point.
        A kill anywhere leaves no manifest or the old one over outputs it no longer
        matches; the next run redoes the partition and duplicates nothing."""
        from bertetl.io.objectstore import check_held, delete_objects, upload_file

        target: Location = self.target
        check_held(target)
        present = set(remote_files(target))
        if MANIFEST_NAME in present:
            delete_objects([target / MANIFEST_NAME])
        stale = sorted((self.owned & present) - set(manifest.outputs) - {MANIFEST_NAME})
        delete_objects(target / name for name in stale)
        for name in manifest.outputs:
            upload_file(self.staged / name, target / name)
        listed = _listing(target)
        manifest.output_files = [
            output.model_copy(update={"mtime_ns": listed[output.relative]})
            for output in manifest.output_files
        ]
        check_held(target)
        write_manifest(target, manifest)
        return manifest


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
    with staging_for(dest) as staged, staging_for(dest) as scratch:
        work = StagedPartition.prepare(
            pipeline, item, _dest(dest), plan, staged, inputs=_inputs_folder(scratch)
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
        results = executor.run_jobs(
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
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(staging_for(dest))
        staged: list[StagedPartition] = []
        for item in items:
            folder = stack.enter_context(staging_for(dest))
            inputs = _inputs_folder(stack.enter_context(staging_for(dest)))
            try:
                staged.append(
                    StagedPartition.prepare(
                        executor.pipeline, item, _dest(dest), plan, folder, inputs=inputs
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


def _dest(dest: Any) -> Any:
    """DEST as the partition code takes it: a `Path`, an object-store `Location` or a
    table (`TableRef`)."""
    if is_remote(dest) or is_table(dest):
        return dest
    return Path(dest.path if isinstance(dest, Location) else dest)


def _inputs_folder(scratch: Path) -> Path:
    """Where a table SOURCE's partition is read to (inside a run's scratch folder)."""
    folder = scratch / "table-input"
    folder.mkdir(exist_ok=True)
    return folder


def _materialize(partition: Partition, folder: Path) -> tuple[Partition, int]:
    """A table SOURCE's partition read from its pinned snapshot into one local Parquet file
    (`bertetl.io.tables.materialize`): the partition with that file, and its rows."""
    from bertetl.io.tables import materialize

    name = "part-0.parquet"
    local = folder / f"{partition.column}={partition.value}" / name
    local.parent.mkdir(parents=True, exist_ok=True)
    rows = materialize(partition.table, partition.column, partition.value, local)
    file = SourceFile(str(local), f"{partition.folder}/{name}", {partition.column: partition.value})
    return dataclasses.replace(partition, files=(file,)), rows


def _check_partition_paths(partition: Partition, dest: Any) -> None:
    """A folder DEST is outside the partition's SOURCE folder (`check_paths`)."""
    if is_remote(dest) or partition.files[0].filesystem is not None:
        source = _source_root_location(partition)
        check_remote_paths(list(partition.files), source, _as_location(dest))
    else:
        check_paths(list(partition.files), str(_source_root(partition)), os.fspath(dest))


def _earlier_outputs(work: StagedPartition, pipeline: Pipeline, scratch: Path) -> list[Any]:
    """The earlier outputs of the partition whose rows may be reused: the files of its
    last commit that verified, or for a table DEST its rows in the table's current
    snapshot (read into a local file; none when the partition was changed since)."""
    item = work.item
    if not is_table(work.target):
        return [work.target / name for name in item.reusable_outputs]
    from bertetl.io.tables import read_committed

    if item.damage:
        return []
    fields = [pa.field(pipeline.config.text_column, pa.large_string()), *pipeline.added_fields()]
    path = read_committed(work.target, item.column, item.value, fields, scratch / "earlier.parquet")
    return [] if path is None else [path]


def _as_location(dest: Any) -> Location:
    if isinstance(dest, Location):
        return dest
    return Location(os.fspath(dest), os.fspath(dest))


def _listing(folder: Location) -> dict[str, int]:
    """Last-modified times (ns) of the objects under `folder`, from one listing (the call
    `verify_outputs` compares against)."""
    import pyarrow.fs as pafs

    listed = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    return {
        i.path[len(folder.path) + 1 :]: int(i.mtime_ns or 0)
        for i in listed
        if i.type == pafs.FileType.File
    }


def _source_root_location(partition: Partition) -> Location:
    """`_source_root` as a `Location` (on the files' store)."""
    file = partition.files[0]
    location = file.location
    for _ in PurePosixPath(file.relative).parts:
        location = location.parent
    return location


def _source_root(partition: Partition) -> Path:
    """The source root the partition's files sit under (their paths less their `relative`)."""
    file = partition.files[0]
    root = Path(file.path)
    for _ in PurePosixPath(file.relative).parts:
        root = root.parent
    return root


def check_partitioned_run(
    source: str | os.PathLike[str] | Location | TableRef,
    dest: str | os.PathLike[str] | Location | TableRef,
    column: str,
    start: str | None = None,
    end: str | None = None,
) -> list[Partition]:
    """Every check a backfill or incremental run can make before it locks DEST, starts a
    server or loads a model; returns the partitions in [start, end].

    SOURCE exists and holds files, each inside a `column=VALUE` folder; DEST is not SOURCE,
    inside it, around it, and overwrites none of its files (`check_run_paths`); a range
    holds at least one partition (`list_partitions`); and the DEST folders of those
    partitions hold nothing bertetl did not write (`check_foreign_files`). All are
    `InputError`s of one line that say what to do.
    """
    if is_table(source) or is_table(dest):
        return _check_table_run(source, dest, column, start, end)
    files = check_run_paths(source, dest)
    partitions = list_partitions(source, column, start, end, files=files)
    check_foreign_files(dest, partitions)
    return partitions


def _check_table_run(
    source: Any, dest: Any, column: str, start: str | None, end: str | None
) -> list[Partition]:
    """`check_partitioned_run` where SOURCE or DEST is a table: the table's package and
    catalog load, DEST is not SOURCE (nor a folder holding a local Delta SOURCE, or inside
    it), and a folder SOURCE holds hive partitions; a folder DEST is checked as usual."""
    from bertetl.io.read import discover
    from bertetl.io.tables import check_table

    for side in (source, dest):
        if is_table(side):
            check_table(side)
    if overlaps(source, dest):
        raise InputError(
            f"DEST {dest} is SOURCE {source}, or one holds the other: a run never writes into "
            "its own input; pick another DEST"
        )
    files = None if is_table(source) else discover(source)
    partitions = list_partitions(source, column, start, end, files=files)
    if not is_table(dest):
        check_foreign_files(dest, partitions)
    return partitions


def overlaps(source: Any, dest: Any) -> bool:
    """Whether SOURCE and DEST are one table, or a local Delta table and a local folder
    one of which lies in the other."""

    def local_path(side: Any) -> Path | None:
        if isinstance(side, TableRef):
            return Path(side.address).resolve() if side.local else None
        if isinstance(side, Location):
            return Path(side.path).resolve() if side.local else None
        return Path(side).resolve()

    if isinstance(source, TableRef) and isinstance(dest, TableRef) and source.uri == dest.uri:
        return True
    here, there = local_path(source), local_path(dest)
    if here is None or there is None:
        return False
    return here == there or here.is_relative_to(there) or there.is_relative_to(here)
