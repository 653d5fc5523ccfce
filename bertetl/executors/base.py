"""The executor contract: what every executor (local, Ray, a future Dask or Slurm) offers.

An executor owns the loop: it takes a list of `Job`s (an input file, or some of its row groups,
and where its output goes) and runs the engine's stages over them, wherever it runs them.
Runs and flows talk to executors only through `Executor` and branch on its `Capabilities`,
never on its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.io.read import SourceFile
from bertetl.io.sink import SinkFactory
from bertetl.io.stores.locations import Location
from bertetl.io.write import ParquetSink
from bertetl.results import EnrichReport, FileResult

if TYPE_CHECKING:
    from bertetl.engine.pipeline import Pipeline
    from bertetl.engine.reuse import ReuseIndex


class Job(NamedTuple):
    """One unit of work: `file` (or its row groups `row_groups`) enriched into `target` (a
    local path, or an object-store `Location` when `capabilities.object_storage`), written
    through the sink `sink` makes for it (the destination's, `Destination.sink`)."""

    file: SourceFile
    target: Path | Location
    schema: pa.Schema
    row_groups: tuple[int, ...] | None = None
    sink: SinkFactory = ParquetSink


@dataclass(frozen=True)
class Capabilities:
    """What runs and flows may ask of an executor.

    - `reuses_rows`: it applies a `ReuseIndex`, so unchanged rows skip the models.
    - `group_rows`: None when one call per file, chunk or partition is cheap (flows make each
      a retried task); else the executor starts up per call (actor pools), so flows hand it
      groups of partitions of about this many rows, and whole files rather than chunks.
    - `object_storage`: it reads `SourceFile`s on an object store and writes to a `Job`
      target that is an object-store `Location` (docs/STORAGE.md); runs refuse an
      object-store SOURCE or DEST for an executor without it.
    - `emits_windows`: it writes more rows than it reads (`--emit windows`: one per token
      window) and accounts the rows read apart (`FileResult.rows_in`); `make_executor`
      refuses `--emit windows` for an executor without it.
    - `spans_nodes`: its workers run on machines other than the driver's (known once
      `setup()` connected), which may share no disk with it: runs give it a staging every
      node reaches where the destination has one (`Destination.node_staging`).
    """

    reuses_rows: bool
    group_rows: int | None = None
    object_storage: bool = False
    emits_windows: bool = False
    spans_nodes: bool = False


class Executor(Protocol):
    """Runs jobs through one config's `Pipeline`: `setup()`, `run_jobs()` any number of
    times, `teardown()`. Failed files are results with an `error`, not exceptions."""

    config: EngineConfig
    #: The engine for this config: schema checks and output columns (`check_file`,
    #: `output_schema`, `added_fields`); executors run its stages.
    pipeline: Pipeline
    capabilities: Capabilities

    def setup(self) -> None:
        """Connect, start workers or load models; idempotent."""

    def run_jobs(
        self,
        jobs: list[Job],
        *,
        scratch: Path | Location,
        reuse: ReuseIndex | None = None,
        on_rows: Callable[[int], None] | None = None,
        stop_at_error: bool = False,
    ) -> list[FileResult]:
        """Enrich every job into its target atomically; results in job order.

        `scratch` is a fresh folder on DEST's filesystem the executor may use (the caller
        removes it; with `capabilities.spans_nodes`, a prefix on the store every node reaches
        where DEST has one); `reuse` is applied only when `capabilities.reuses_rows`; `on_rows(n)`
        reports progress; `stop_at_error`: no job after the first failed one need run.
        """
        ...

    def collect(self, report: EnrichReport) -> None:
        """Add the counters of the jobs run so far (stages, OOM splits)."""

    def teardown(self) -> None:
        """Free models, stop workers or the cluster this executor started."""
