"""One run as the platform sees it: OpenLineage events at its start and end, its metrics
pushed after each partition and at the end. A command or flow wraps its run in
`observe_run(...)` and tells the observer what each partition (or the whole run) did."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bertetl.config import EngineConfig
from bertetl.errors import BertEtlError
from bertetl.observe.lineage import LineageRun, ModelInfo, Parent, lineage_configured
from bertetl.observe.metrics import RunFigures, make_pusher
from bertetl.observe.options import ObserveOptions

log = logging.getLogger(__name__)


class RunObserver:
    """Counts what a run did (`RunFigures`) and reports it: metrics, lineage."""

    def __init__(
        self, instance: str, options: ObserveOptions | None, lineage: LineageRun | None
    ) -> None:
        self.figures = RunFigures()
        #: No options: a run without metrics (evaluate, train).
        self.pusher = None if options is None else make_pusher(options.gateway(), instance)
        self.lineage = lineage
        #: Why the run failed, when it ends without raising (a flow's failed partitions).
        self.failure: str | None = None

    def partition(self, status: str, manifest: Any = None, planned_rows: int = 0) -> None:
        """A partition ended: `committed` (its manifest), `skipped` or `failed` (its
        planned rows count as failed rows); the metrics are pushed."""
        self.figures.partitions[status] = self.figures.partitions.get(status, 0) + 1
        if status == "committed" and manifest is not None:
            self.figures.add_rows(
                manifest.rows_inferred,
                manifest.rows_reused,
                manifest.rows_failed,
                getattr(manifest, "rows_deduplicated", 0),
            )
            self.figures.tokens += manifest.tokens
            self.figures.device_seconds += manifest.device_seconds
        elif status == "failed":
            self.figures.add_rows(0, 0, planned_rows)
        self.push()

    def files(self, report: Any) -> None:
        """A whole run's report (`EnrichReport`): its rows, tokens and device-seconds."""
        done = [f for f in report.files if f.error is None]
        reused = sum(f.rows_reused for f in done)
        failed = sum(f.rows_failed for f in done) + sum(
            f.rows for f in report.files if f.error is not None
        )
        deduplicated = sum(getattr(f, "rows_deduplicated", 0) for f in done)
        inferred = (
            sum(f.rows for f in done) - reused - deduplicated - sum(f.rows_failed for f in done)
        )
        self.figures.add_rows(inferred, reused, failed, deduplicated)
        self.figures.tokens += report.tokens
        self.figures.device_seconds += report.device_seconds

    def keyed(self, report: Any) -> None:
        """A keyed run's report (`KeyedReport`): rows inferred (those that failed counted as
        failed), reused, deduplicated; tokens and the model's seconds."""
        counts = report.counts
        failed = min(counts.get("rows_failed", 0), counts.get("rows_inferred", 0))
        self.figures.add_rows(
            counts.get("rows_inferred", 0) - failed,
            counts.get("rows_reused", 0),
            failed,
            counts.get("rows_deduplicated", 0),
        )
        self.figures.tokens += report.tokens
        self.figures.device_seconds += report.model_seconds
        self.push()

    def summary_rows(self, rows: list[dict[str, Any]]) -> None:
        """A run's summary rows (`SummaryRow` dicts, one per file): rows by outcome, tokens
        and device-seconds of those written."""
        for row in rows:
            if row["status"] != "committed":
                continue
            self.figures.add_rows(
                row["inferred"], row["reused"], row["failed"], row.get("deduplicated", 0)
            )
            self.figures.tokens += row.get("tokens", 0)
            self.figures.device_seconds += row.get("device_seconds", 0.0)

    def push(self) -> None:
        if self.pusher is not None:
            self.pusher.push(self.figures)

    def end(self, error: BaseException | None) -> None:
        """The run ended (`error`: what it raised): lineage COMPLETE or FAIL, the last push."""
        cause = self.failure if error is None else f"{type(error).__name__}: {error}"
        if cause is None:
            self.figures.succeeded = time.time()
        if self.lineage is not None:
            if cause is None:
                self.lineage.complete()
            else:
                self.lineage.fail(" ".join(cause.split()))
        self.push()
        if self.pusher is not None:
            self.pusher.close()


def _engine_lineage(
    engine: EngineConfig | None, enriches: bool
) -> tuple[list[Any], list[ModelInfo], str | None]:
    """The columns the engine adds (where the run `enriches`), its models and the text
    column; none where a model cannot be found (the run refuses it and FAIL says so)."""
    if engine is None:
        return [], [], None
    from bertetl.engine.pipeline import Pipeline
    from bertetl.runs.plan import model_fingerprints

    try:
        added = Pipeline(engine).added_fields() if enriches else []
        specs = engine.model_specs()
        models = [
            ModelInfo(role, Path(str(specs[role])).name, fingerprint)
            for role, fingerprint in model_fingerprints(engine).items()
        ]
    except BertEtlError as e:
        log.debug("lineage without the models: %s", e)
        return [], [], None
    return added, models, engine.text_column if enriches else None


def run_lineage(
    kind: str,
    source: Any,
    dest: Any,
    engine: EngineConfig | None,
    parent: Parent | None = None,
    storage_options: dict[str, str] | None = None,
    enriches: bool = True,
) -> LineageRun | None:
    """The run's lineage when the OpenLineage client is configured (else None): SOURCE and
    DEST (places, or what the user gave, resolved with `storage_options`) named by the
    naming spec, SOURCE's schema, the engine's models and, where the run `enriches` (DEST
    holds SOURCE's rows with the added columns), DEST's schema and column lineage."""
    if not lineage_configured():
        return None
    try:
        from bertetl.io.naming import dataset_name, place_schema
        from bertetl.io.stores.locations import resolve

        if isinstance(source, str):
            source = resolve(source, storage_options)
        if isinstance(dest, str):
            dest = resolve(dest, storage_options)
        added, models, text_column = _engine_lineage(engine, enriches)
        return LineageRun(
            job=f"{kind}:{getattr(dest, 'uri', dest)}",
            inputs=[dataset_name(source)],
            outputs=[dataset_name(dest)],
            input_schema=place_schema(source),
            enriches=enriches,
            added=added,
            text_column=text_column,
            models=models,
            parent=parent,
        )
    except BertEtlError as e:  # a place that cannot be named: the run says why itself
        log.warning("OpenLineage: %s; no events for this run", e)
        return None
    except ImportError as e:
        log.warning(
            "OpenLineage configured but not installed: %s (pip install 'bertetl[observe]')", e
        )
        return None


@contextmanager
def observe_run(
    kind: str,
    source: Any,
    dest: Any,
    engine: EngineConfig | None,
    options: ObserveOptions | None = None,
    parent: Parent | None = None,
    storage_options: dict[str, str] | None = None,
    enriches: bool = True,
) -> Iterator[RunObserver]:
    """Report the run inside to the platform: START, the metrics as the observer is told
    (where `options` are given: None for a run without metrics), then COMPLETE (or FAIL with
    the one-line cause: what was raised, or `observer.failure`). `storage_options` and
    `enriches`: as `run_lineage` takes them."""
    lineage = run_lineage(kind, source, dest, engine, parent, storage_options, enriches)
    observer = RunObserver(str(getattr(dest, "uri", dest)), options, lineage)
    if lineage is not None:
        lineage.start()
    try:
        yield observer
    except BaseException as e:
        observer.end(e)
        raise
    observer.end(None)
