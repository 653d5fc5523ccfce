"""The Ray executor: the engine's stages as one Ray Data pipeline per run (or partition).

    read (ParquetFilesDatasource: `read.stream` per file or row-group range)
      -> map_batches(TokenizeActor)   validate + tokenize, CPU actors
      -> map_batches(ModelActor)      the model stages, an actor pool (num_gpus=1 per actor
                                      on GPU clusters), models loaded once per actor
      -> write_datasink(PartsDatasink) one output file per input file, committed atomically

No shuffle: every row flows from its read task through one tokenizer and one model actor to
a part file. `RayExecutor` implements the `Executor` contract (`bertetl.executors.base`), so
runs and flows use it as they use the local executor.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import ray.data

from bertetl.config import EngineConfig
from bertetl.engine.embed import check_one_calibration
from bertetl.engine.pipeline import Pipeline
from bertetl.errors import CommitError, ExecutorError
from bertetl.executor_registry import RayOptions
from bertetl.executors.base import Capabilities, Job
from bertetl.executors.ray.actors import ModelActor, TokenizeActor
from bertetl.executors.ray.datasink import CommitOptions, FileTarget, PartsDatasink
from bertetl.executors.ray.datasource import ParquetFilesDatasource, ReadRange
from bertetl.executors.ray.nodes import check_every_node_sees, on_this_node
from bertetl.io.chunks import cut_row_groups
from bertetl.io.paths import absolute_target
from bertetl.io.read import SourceFile, read_metadata
from bertetl.io.stores.locations import Location
from bertetl.io.stores.objects import is_machine_staging
from bertetl.processes import tagging, watch
from bertetl.results import EnrichReport, FileResult

log = logging.getLogger(__name__)

#: Big files are read by several tasks, each about this many rows (whole row groups).
READ_RANGE_ROWS = 262_144
#: How often the driver collects written rows for progress.
PROGRESS_EVERY_S = 0.5


def check_shared_scratch(scratch: Path | Location, nodes: int) -> None:
    """Refuse (`ExecutorError`) a run whose parts would be staged in this machine's own
    staging (a table DEST: `is_machine_staging`) on a cluster of several nodes, whose other
    nodes could neither write nor read them. An object-store DEST is staged on the store
    there (`Destination.node_staging`), a local DEST beside it on the filesystem every node
    shares."""
    if nodes > 1 and is_machine_staging(scratch):
        raise ExecutorError(
            f"--executor ray stages a table DEST's parts on this machine "
            f"({scratch}), which the cluster's other {nodes - 1} node(s) cannot reach: run "
            "on a single-node Ray (or a local one, the default), or write to an object-store "
            "DEST or a DEST on a filesystem every node shares"
        )


def _alive_nodes(with_cpus: bool = False) -> int:
    """How many nodes of the connected Ray cluster are alive (`with_cpus`: and offer CPUs
    for tasks: a head started with `--num-cpus 0` runs none)."""
    return sum(
        1
        for node in ray.nodes()
        if node.get("Alive") and (not with_cpus or node.get("Resources", {}).get("CPU", 0) > 0)
    )


def _absolute(file: SourceFile) -> SourceFile:
    """A local file by its absolute path (tasks may run elsewhere); a URI as it is."""
    if file.filesystem is not None:
        return file
    return replace(file, path=str(Path(file.path).resolve()))


@dataclass(frozen=True)
class RayPlan:
    """How the pipeline uses the cluster: actor counts and the resources each asks for."""

    model_actors: int
    tokenize_actors: int
    gpus_per_model_actor: float
    cpus_per_model_actor: float
    cpus_per_tokenize_actor: float
    cpus_per_read_task: float
    #: Ray Data's default (1 CPU) would not fit beside the actors on a 2-CPU node, and write
    #: tasks left waiting would keep every enriched block in the object store.
    cpus_per_write_task: float = 0.25

    @classmethod
    def for_cluster(cls, config: EngineConfig, resources: dict[str, float], nodes: int) -> RayPlan:
        """GPU clusters: one model actor per GPU, a tokenizer CPU each. CPU clusters: one
        model actor per node (it uses all the node's cores) and a half-CPU tokenizer beside
        it, so read, tokenize and model fit on a 2-CPU node."""
        options = ray_options(config)
        gpus = int(resources.get("GPU", 0))
        if config.device == "cuda" and not gpus:
            raise ExecutorError("--device cuda was asked for, but the Ray cluster has no GPU")
        if gpus and config.device != "cpu":
            actors = options.actors or gpus
            return cls(actors, options.tokenizers or actors, 1.0, 1.0, 1.0, 0.25)
        actors = options.actors or max(1, nodes)
        return cls(actors, options.tokenizers or actors, 0.0, 1.0, 0.5, 0.25)


def ray_options(config: EngineConfig) -> RayOptions:
    """The config's Ray options (defaults when it names another executor)."""
    return config.executor if isinstance(config.executor, RayOptions) else RayOptions()


class RayExecutor:
    """Runs jobs as a Ray Data pipeline; the driver plans, tracks progress and reports.

    Row reuse is not applied (every row goes through the models: same output, more work),
    and flows hand it groups of partitions, since its actor pools start once per call.
    """

    def __init__(self, config: EngineConfig) -> None:
        check_one_calibration(config.embed_precision, None)
        self.pipeline = Pipeline(config)
        self.config = config
        self.capabilities = Capabilities(
            reuses_rows=False, group_rows=ray_options(config).group_rows, object_storage=True
        )
        self._started_ray = False
        self._watchdog: Any = None

    def setup(self) -> None:
        """Connect to the Ray cluster (`ray_address`, else RAY_ADDRESS, else a local Ray)."""
        if ray.is_initialized():
            self._count_nodes()
            return
        # "local": a new Ray for this run, never a stale `ray start` cluster on this machine
        address = ray_options(self.config).address or os.environ.get("RAY_ADDRESS") or "local"
        if address == "local":  # everything the local Ray starts is stopped with this run,
            self._watchdog = watch()  # even if it is killed while Ray is still starting
        try:
            with tagging(self._watchdog):
                ray.init(
                    address=address,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                )
        except (ConnectionError, RuntimeError, ValueError) as e:
            self._stop_watchdog()
            where = "a local Ray" if address == "local" else address
            raise ExecutorError(f"cannot start or reach Ray at {where}: {e}") from e
        except BaseException:  # Ctrl-C while Ray starts: no watchdog left behind
            self._stop_watchdog()
            raise
        self._started_ray = True
        self._count_nodes()

    def _count_nodes(self) -> None:
        """`capabilities.spans_nodes`: whether the cluster has nodes besides this one."""
        self.capabilities = replace(self.capabilities, spans_nodes=_alive_nodes() > 1)

    def teardown(self) -> None:
        """Stop the local Ray this pipeline started (a cluster it joined keeps running)."""
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
        self._stop_watchdog()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.terminate()
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
            self._watchdog = None

    def collect(self, report: EnrichReport) -> None:
        """Rows cut at the model's max length (counted by the tokenizer actors) and the
        label counts of the committed files."""

    def _worker_config(self) -> EngineConfig:
        """The config with model directories as absolute paths (workers on other nodes, or
        in another working directory, resolve the same folders)."""
        return self.pipeline.absolute_config()

    def plan(self) -> RayPlan:
        """Actor counts and resources for the cluster this pipeline is connected to."""
        nodes = _alive_nodes(with_cpus=True)
        plan = RayPlan.for_cluster(self.config, ray.cluster_resources(), nodes)
        log.info("ray: %s", plan)
        return plan

    def run_jobs(
        self,
        jobs: list[Job],
        *,
        scratch: Path | Location,
        reuse: Any = None,
        on_rows: Callable[[int], None] | None = None,
        stop_at_error: bool = False,
    ) -> list[FileResult]:
        """Enrich every job in one Ray Data pipeline; results in job order.

        `scratch` (a fresh folder on a filesystem every node shares, a prefix on the store
        every node reaches, or this machine's staging on a single-node Ray:
        `check_shared_scratch`; the caller removes it) holds the parts and error records
        until the files are committed, into local paths or, uploaded whole,
        object-store `Location`s. `reuse` is ignored
        (`capabilities.reuses_rows` is false) and every job runs (`stop_at_error` too).
        """
        if not jobs:
            return []
        nodes = _alive_nodes()
        check_shared_scratch(scratch, nodes)
        if any(job.row_groups is not None for job in jobs):
            raise ValueError("RayExecutor reads whole files: cut big files with READ_RANGE_ROWS")
        scratch = absolute_target(scratch)
        if nodes > 1:
            check_every_node_sees(scratch)
        started = time.perf_counter()
        jobs = [
            job._replace(file=_absolute(job.file), target=absolute_target(job.target))
            for job in jobs
        ]
        ranges, targets, footers = self._read_plan(jobs)
        plan = self.plan()
        options = CommitOptions(self.pipeline.validate.error_column, self.pipeline.label_columns())
        with _data_context(_window_bytes(footers, self.config.window_rows)):
            errors_dir, parts_dir = scratch / "ray-errors", scratch / "ray-parts"
            counters = RunCounters.options(scheduling_strategy=on_this_node()).remote()
            try:
                sink = PartsDatasink(targets, parts_dir, errors_dir, options, counters)
                source = ParquetFilesDatasource(ranges, self.config.window_rows, errors_dir)
                dataset = self._dataset(source, len(ranges), plan, errors_dir, counters)
                write_cpus = {"num_cpus": plan.cpus_per_write_task}
                _run_with_progress(
                    lambda: dataset.write_datasink(sink, ray_remote_args=write_cpus),
                    counters,
                    on_rows,
                )
                truncated = ray.get(counters.truncated.remote())
            finally:  # the dataset keeps a handle: without this the actor (and its worker
                ray.kill(counters)  # process) lived on, one per call, on a long-lived cluster
        if len(sink.results) != len(jobs):  # every file is committed or failed, never missed
            raise CommitError(f"Ray reported {len(sink.results)} of {len(jobs)} files")
        for index, rows in truncated.items():  # results are in job (file index) order
            sink.results[index].rows_truncated = rows
        seconds = time.perf_counter() - started
        for result in sink.results:
            result.seconds = seconds
        return sink.results

    def _read_plan(
        self, jobs: list[Job]
    ) -> tuple[list[ReadRange], dict[int, FileTarget], list[pq.FileMetaData]]:
        """Read tasks (one per file, or per chunk of about READ_RANGE_ROWS rows of a big
        file), each file's commit target, and the footers (read once)."""
        ranges: list[ReadRange] = []
        targets: dict[int, FileTarget] = {}
        footers: list[pq.FileMetaData] = []
        for index, (file, target, schema, _, sink) in enumerate(jobs):
            metadata = read_metadata(file)
            footers.append(metadata)
            first = 0
            cuts = cut_row_groups(metadata, READ_RANGE_ROWS)
            for groups, rows in cuts:
                ranges.append(
                    ReadRange(index, file, first, rows, groups if len(cuts) > 1 else None)
                )
                first += rows
            output = self.pipeline.output_schema(schema)
            targets[index] = FileTarget(index, file.path, target, metadata.num_rows, output, sink)
        return ranges, targets, footers

    def _dataset(
        self,
        source: ParquetFilesDatasource,
        blocks: int,
        plan: RayPlan,
        errors_dir: Path | Location,
        counters: Any,
    ) -> Any:
        """read -> tokenize actors -> model actors, as a lazy Ray dataset. The tokenize actors
        build their tokenizers from the driver's snapshots, so the driver loads them once
        (importing transformers and torch here) and the actors do not."""
        worker_config = self._worker_config()
        actors = ray.data.ActorPoolStrategy
        return (
            ray.data.read_datasource(
                source, num_cpus=plan.cpus_per_read_task, override_num_blocks=blocks
            )
            .map_batches(
                TokenizeActor,
                fn_constructor_args=(
                    worker_config,
                    errors_dir,
                    counters,
                    self.pipeline.tokenizer_snapshots(),
                ),
                batch_format="pyarrow",
                batch_size=None,
                compute=actors(size=plan.tokenize_actors),
                num_cpus=plan.cpus_per_tokenize_actor,
                udf_modifying_row_count=False,
            )
            .map_batches(
                ModelActor,
                fn_constructor_args=(worker_config, errors_dir),
                batch_format="pyarrow",
                batch_size=None,
                compute=actors(size=plan.model_actors),
                num_cpus=plan.cpus_per_model_actor,
                num_gpus=plan.gpus_per_model_actor,
                udf_modifying_row_count=False,
            )
        )


#: Bounds on a block's size in bytes (Ray's default target is 128 MiB).
MIN_BLOCK_BYTES, MAX_BLOCK_BYTES = 16 << 10, 128 << 20


def _window_bytes(footers: list[pq.FileMetaData], window_rows: int) -> int:
    """About how many bytes `window_rows` rows take in memory, from the footers (the widest
    file's uncompressed bytes per row), within [16 KiB, 128 MiB]."""
    per_row = 0.0
    for metadata in footers:
        if metadata.num_rows:
            size = sum(
                metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)
            )
            per_row = max(per_row, size / metadata.num_rows)
    return int(min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, per_row * window_rows)))


@contextmanager
def _data_context(block_bytes: int) -> Any:
    """Ray Data settings for a bertetl run, restored after.

    - Blocks of about one window (`block_bytes`): a read task's windows are not merged into
      128 MiB blocks, so a model actor's memory is bounded by the window, as locally.
    - A failed block is recorded per file and reported by the sink, rather than aborting
      every other file (`max_errored_blocks` unlimited).
    - No Ray progress bars: bertetl reports progress itself.
    """
    context = ray.data.DataContext.get_current()
    names = ("target_max_block_size", "max_errored_blocks", "enable_progress_bars")
    saved = {name: getattr(context, name) for name in names}
    context.target_max_block_size = block_bytes
    context.max_errored_blocks = -1
    context.enable_progress_bars = False
    try:
        yield context
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


@ray.remote(num_cpus=0)
class RunCounters:
    """Figures the workers report to the driver: rows written (taken for progress as they
    come) and rows whose text the model does not see whole, by file index."""

    def __init__(self) -> None:
        self.rows = 0
        self.truncated_rows: dict[int, int] = {}

    def add(self, rows: int) -> None:
        self.rows += rows

    def add_truncated(self, by_file: dict[int, int]) -> None:
        for index, rows in by_file.items():
            self.truncated_rows[index] = self.truncated_rows.get(index, 0) + rows

    def take(self) -> int:
        rows, self.rows = self.rows, 0
        return rows

    def truncated(self) -> dict[int, int]:
        return self.truncated_rows


def _run_with_progress(
    execute: Callable[[], None], progress: Any, on_rows: Callable[[int], None] | None
) -> None:
    """Run the dataset in a thread; this (the caller's) thread reports progress meanwhile,
    so `on_rows` runs where the caller's context (a Prefect task run) lives."""
    if on_rows is None:
        execute()
        return
    failure: list[BaseException] = []

    def target() -> None:
        try:
            execute()
        except BaseException as e:  # re-raised in the caller's thread below
            failure.append(e)

    worker = threading.Thread(target=target, name="bertetl-ray-dataset", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(PROGRESS_EVERY_S)
        rows = ray.get(progress.take.remote())
        if rows:
            on_rows(rows)
    if failure:
        raise failure[0]
