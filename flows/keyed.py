"""The keyed incremental run as a Prefect flow: one retried task that plans, infers, writes
and commits (`bertetl.runs.keyed`), and the counts published as artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bertetl.flows.params import IncrementalParams
from bertetl.flows.tasks import quiet_user_errors, retry_transient, with_retries
from bertetl.runs.keyed import KeyedOptions, KeyedReport, run_keyed


@task(name="enrich-by-key", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def enrich_by_key_task(params: IncrementalParams, dry_run: bool = False) -> KeyedReport:
    """Plan and run the keyed run (all or nothing: a retry starts from what DEST holds)."""
    options = KeyedOptions(
        key=params.key, keep_deleted=params.keep_deleted, output_columns=params.output_columns
    )
    return run_keyed(
        params.source,
        params.dest,
        params.engine,
        options,
        dry_run=dry_run,
        storage_options=params.storage_options,
        overwrite_foreign=params.overwrite_foreign,
        index=params.index,
    )


def run_keyed_flow(params: IncrementalParams, title: str) -> list[dict[str, Any]]:
    """Run the keyed task with the run's retries; publish its totals and files; returns the
    totals as one summary row (what `incremental_flow` returns with a key)."""
    return [keyed_report(params, title).to_dict()]


def keyed_report(params: IncrementalParams, title: str) -> KeyedReport:
    """Run the keyed task, reported to the platform (`observe_run`) and as artifacts."""
    from bertetl.flows.publish import flow_run_parent
    from bertetl.io.destinations import parse_run
    from bertetl.observe import observe_run

    quiet_user_errors()
    source, dest = parse_run(params.source, params.dest, params.storage_options)
    observing = observe_run(
        "incremental", source, dest, params.engine, params.observe, flow_run_parent()
    )
    with observing as observer:
        report = with_retries(enrich_by_key_task, params.run)(params)
        observer.keyed(report)
    get_run_logger().info(report.line("incremental"))
    publish_keyed(title, report)
    return report


@flow(name="bertetl-incremental-keyed")
def keyed_flow(params: IncrementalParams) -> KeyedReport:
    """The keyed incremental run, returning its report (the CLI's; deployments run
    `incremental_flow` with a key)."""
    return keyed_report(params, f"incremental --key {params.source} -> {params.dest}")


def publish_keyed(title: str, report: KeyedReport) -> None:
    """The counts as a table artifact (one row per input file) and a markdown artifact."""
    create_table_artifact(report.files, key="bertetl-summary", description=title)
    lines = [f"# {title}", "", "| count | rows |", "|---|---:|"]
    lines += [f"| {name} | {value:,} |" for name, value in report.counts.items()]
    lines += ["", f"Committed: {'yes' if report.committed else 'no (nothing changed)'}"]
    create_markdown_artifact("\n".join(lines), key="bertetl-report", description=title)
