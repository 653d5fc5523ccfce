"""The backfill and incremental flows: plan partitions, enrich each as a retried task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from bertetl.engine.remote_models import with_storage_options
from bertetl.executors import Executor, make_executor
from bertetl.flows.params import BackfillParams, IncrementalParams, PartitionedParams
from bertetl.flows.progress import RunProgress
from bertetl.flows.publish import RunDrift, finish_run, flow_run_parent, partition_row
from bertetl.flows.tasks import (
    enrich_partition_task,
    enrich_partitions_task,
    quiet_user_errors,
    with_retries,
)
from bertetl.io.destinations import parse_run
from bertetl.observe import RunObserver, observe_run
from bertetl.reports.drift import drift_report, plot_path
from bertetl.runs.enrich import check_storage
from bertetl.runs.plan import PartitionPlan, Plan, plan_partitions
from bertetl.runs.staged import PartitionOutcome, check_partitioned_run, group_partitions


def run_partitioned(
    params: PartitionedParams, title: str, start: str | None = None, end: str | None = None
) -> list[dict[str, Any]] | State:
    """Plan, then enrich the partitions that need it; returns the summary rows.

    Holds DEST's lock for the whole run. A partition that fails after its retries is named
    in the summary and the flow fails at the end, after every other partition committed.
    A committed partition whose outputs no longer match its manifest (missing, truncated,
    changed) is redone, with a warning naming the files; its summary row says 'damaged'.
    At the end, the drift of the committed partitions in range is reported (`_drift`).
    """
    logger = get_run_logger()
    quiet_user_errors()
    source, dest = parse_run(
        params.source, params.dest, params.storage_options, params.overwrite_foreign, params.index
    )
    engine = with_storage_options(params.engine, params.storage_options)  # models on a store
    params = params.model_copy(update={"engine": engine})
    partitions = check_partitioned_run(source, dest, params.partition_column, start, end)
    observing = observe_run(
        title.split()[0], source, dest, params.engine, params.observe, flow_run_parent()
    )
    with observing as observer, dest.lock():
        removed = dest.clean_leftovers()
        if removed:
            logger.info("removed %d leftover(s) of an interrupted run", removed)
        plan = plan_partitions(
            source,
            dest,
            params.partition_column,
            params.engine,
            start=start,
            end=end,
            force=params.force,
            partitions=partitions,
        )
        rows, damaged = _planned_rows(plan)
        for _ in plan.by_action("skip"):
            observer.partition("skipped")
        todo = plan.by_action("enrich")
        logger.info(
            "%d partition(s) to enrich (%d damaged), %d unchanged",
            len(todo),
            sum(1 for item in todo if item.damage),
            len(plan.by_action("skip")),
        )
        for item in todo:  # why each is redone (damaged ones were warned about above)
            if not item.damage:
                logger.info("%s=%s: %s", item.column, item.value, item.reason)
        progress = RunProgress(
            sum(item.rows for item in todo), title, logger, bar=params.run.progress_bar
        )
        failures: dict[str, str] = {}
        if todo:
            rows += _enrich_todo(todo, plan, params, progress, failures, source, dest, observer)
        progress.finish()
        drift = _drift(params, dest, start, end, rows)
        if failures:
            observer.failure = f"{len(failures)} partition(s) failed: " + "; ".join(
                f"{name}: {cause}" for name, cause in failures.items()
            )
    rows.sort(key=lambda r: r["partition"])
    return finish_run(title, rows, failures, damaged, drift, params.observe.cost_per_hour)


def _drift(
    params: PartitionedParams,
    dest: Any,
    start: str | None,
    end: str | None,
    rows: list[dict[str, Any]],
) -> RunDrift | None:
    """The drift of DEST's committed partitions in [start, end], each against the ones
    before it: a warning per flagged partition (its summary row says why), and the plot
    drawn into DEST's reports folder. Drift never fails a run: a drift that cannot be
    computed or drawn is a warning too (None: not computed)."""
    logger = get_run_logger()
    try:
        report = drift_report(
            dest, params.partition_column, params.drift, params.engine.prefix, start, end
        )
    except Exception as e:  # drift is a report: whatever goes wrong, the run goes on
        logger.warning("drift not computed: %s: %s", type(e).__name__, e)
        return None
    for partition in report.flagged:
        logger.warning("drift: %s: %s; look at it", partition.name, partition.reason)
    why = {p.partition: p.reason for p in report.flagged}
    for row in rows:
        row["drift"] = why.get(row["partition"], "")
    where = plot_path(dest)
    if where is None:  # a table has no folder of its own to put a plot in
        return RunDrift(report, None)
    try:
        plot = report.draw(where)
    except Exception as e:  # a plot that cannot be drawn or written (a full disk) is a warning
        logger.warning("drift plot not drawn: %s: %s", type(e).__name__, e)
        plot = None
    return RunDrift(report, plot)


def _planned_rows(plan: Plan) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Summary rows of the partitions left as they are (skipped, orphans), with warnings for
    damaged and orphaned outputs; and the damaged files by partition."""
    logger = get_run_logger()
    rows: list[dict[str, Any]] = []
    damaged: dict[str, str] = {}
    for item in plan.partitions:
        name = f"{item.column}={item.value}"
        if item.damage:
            files = "; ".join(str(d) for d in item.damage)
            damaged[name] = files
            redo = "redoing it" if item.action == "enrich" else "left as is"
            logger.warning(
                "%s: committed output does not match its manifest: %s; %s", name, files, redo
            )
        if item.action == "skip":
            rows.append(partition_row(item.value, "skipped", item.reason, item.previous))
        elif item.action == "orphan":
            logger.warning(
                "%s: committed output has no source partition any more; left as is", name
            )
            rows.append(partition_row(item.value, "orphan", item.reason, item.previous))
    return rows, damaged


def _enrich_todo(
    todo: list[PartitionPlan],
    plan: Plan,
    params: PartitionedParams,
    progress: RunProgress,
    failures: dict[str, str],
    source: Any,
    dest: Any,
    observer: RunObserver,
) -> list[dict[str, Any]]:
    """Enrich the planned partitions (each, or in groups for executors that start up per
    call) into `dest` (a path, or an object-store `Location`); summary rows, failed
    partitions added to `failures`; each partition's figures go to `observer`."""
    logger = get_run_logger()
    rows: list[dict[str, Any]] = []
    executor = make_executor(params.engine)
    check_storage(executor, source, dest)
    executor.setup()
    try:
        group_rows = executor.capabilities.group_rows
        if group_rows is None:
            outcomes = _each_partition(executor, todo, plan, params, progress, dest)
        else:
            groups = group_partitions(todo, group_rows)
            outcomes = _in_groups(executor, groups, plan, params, progress, dest)
        for outcome in outcomes:
            item, manifest = outcome.item, outcome.manifest
            name = f"{item.column}={item.value}"
            if manifest is None:
                failures[name] = str(outcome.error)
                logger.error("%s failed: %s", name, outcome.error)
                rows.append(partition_row(item.value, "failed", str(outcome.error)))
                observer.partition("failed", planned_rows=item.rows)
                continue
            logger.info(
                "%s committed: %d rows (%d inferred, %d reused, %d with enrich_error)",
                name,
                manifest.rows_out,
                manifest.rows_inferred,
                manifest.rows_reused,
                manifest.rows_failed,
            )
            rows.append(partition_row(item.value, "committed", item.reason, manifest))
            observer.partition("committed", manifest)
    finally:
        executor.teardown()
    return rows


def _each_partition(
    executor: Executor,
    todo: list[PartitionPlan],
    plan: Plan,
    params: PartitionedParams,
    progress: RunProgress,
    dest: Any,
) -> Iterator[PartitionOutcome]:
    """One retried task per partition, reusing unchanged rows where the executor can."""
    task = with_retries(enrich_partition_task, params.run)
    reuse = params.reuse and not params.force  # forced: every row through the model
    for item in todo:
        try:
            yield PartitionOutcome(item, task(executor, item, dest, plan, reuse, progress))
        except Exception as e:
            yield PartitionOutcome(item, error=e)


def _in_groups(
    executor: Executor,
    groups: list[list[PartitionPlan]],
    plan: Plan,
    params: PartitionedParams,
    progress: RunProgress,
    dest: Any,
) -> Iterator[PartitionOutcome]:
    """One retried task per group of partitions (executors that start up per call, e.g.
    actor pools, start once per group); each partition commits alone."""
    task = with_retries(enrich_partitions_task, params.run)
    for group in groups:
        try:
            name = f"{group[0].column}={group[0].value}"
            if len(group) > 1:
                name += f" .. {group[-1].value} ({len(group)} partitions)"
            yield from task(executor, group, dest, plan, progress, name)
        except Exception as e:
            for item in group:
                yield PartitionOutcome(item, error=e)


@flow(name="bertetl-backfill")
def backfill_flow(params: BackfillParams) -> list[dict[str, Any]] | State:
    """Enrich the partitions in [start, end]; committed, unchanged partitions are skipped."""
    title = f"backfill {params.source} -> {params.dest} ({params.start} .. {params.end})"
    return run_partitioned(params, title, params.start, params.end)


@flow(name="bertetl-incremental")
def incremental_flow(params: IncrementalParams) -> list[dict[str, Any]] | State:
    """Enrich every new or changed partition; unchanged rows reuse their earlier outputs.
    With a key, every new or changed row (`run_keyed_flow`)."""
    if params.key:
        from bertetl.flows.keyed import run_keyed_flow

        return run_keyed_flow(params, f"incremental --key {params.source} -> {params.dest}")
    return run_partitioned(params, f"incremental {params.source} -> {params.dest}")
