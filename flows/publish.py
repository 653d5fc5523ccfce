"""The end-of-run report: a Prefect table artifact and a markdown artifact; for partitioned
runs, the drift per partition too (a table and a markdown artifact with the plot)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State

from bertetl.errors import PartitionsFailedError
from bertetl.observe.lineage import Parent, job_namespace
from bertetl.reports.drift import DriftReport
from bertetl.results import SummaryRow


@dataclass(frozen=True)
class RunDrift:
    """A run's drift report and the plot it drew (None: none drawn)."""

    report: DriftReport
    plot: Path | None = None


def _labels(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(
        ", ".join(f"{label}: {n}" for label, n in tally.items()) for tally in counts.values()
    )


def partition_row(value: str, status: str, reason: str, manifest: Any = None) -> dict[str, Any]:
    """One summary row (`SummaryRow`, as a dict: Prefect stores it as the flow's result);
    figures come from the partition's manifest when it was committed."""
    if manifest is None:
        return SummaryRow(value, status, reason).to_dict()
    return SummaryRow(
        value,
        status,
        reason,
        rows=manifest.rows_out,
        inferred=manifest.rows_inferred,
        reused=manifest.rows_reused,
        failed=manifest.rows_failed,
        truncated=manifest.rows_truncated,
        seconds=manifest.seconds,
        tokens=manifest.tokens,
        device_seconds=manifest.device_seconds,
        labels=_labels(manifest.label_counts),
    ).to_dict()


def publish(
    title: str,
    rows: list[dict[str, Any]],
    failures: dict[str, str],
    damaged: dict[str, str] | None = None,
    drift: RunDrift | None = None,
    cost_per_hour: float | None = None,
) -> None:
    """Create the summary table artifact and a markdown artifact naming any failures, any
    partitions whose committed outputs were found damaged (`damaged`: name -> files) and
    the partitions whose drift is flagged; then the drift artifacts (`publish_drift`)."""
    create_table_artifact(rows, key="bertetl-summary", description=title)
    totals = {k: sum(r[k] for r in rows) for k in ("rows", "inferred", "reused", "failed")}
    lines = [
        f"# {title}",
        "",
        f"- committed: {sum(r['status'] == 'committed' for r in rows)}",
        f"- skipped (unchanged): {sum(r['status'] == 'skipped' for r in rows)}",
        f"- failed: {len(failures)}",
        *([f"- damaged outputs found: {len(damaged)}"] if damaged is not None else []),
        f"- rows written: {totals['rows']:,} (inferred {totals['inferred']:,}, "
        f"reused {totals['reused']:,}, with enrich_error {totals['failed']:,})",
        _cost_line([r for r in rows if r["status"] == "committed"], cost_per_hour),
    ]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- `{name}`: {cause}" for name, cause in failures.items()]
    if damaged:
        lines += ["", "## Damaged outputs (did not match their manifest)", ""]
        lines += [f"- `{name}`: {files}" for name, files in damaged.items()]
    if drift is not None:
        lines += ["", "## Drift", "", *_drift_lines(drift)]
    create_markdown_artifact("\n".join(lines), key="bertetl-report", description=title)
    if drift is not None:
        publish_drift(title, drift)


def _cost_line(rows: list[dict[str, Any]], cost_per_hour: float | None) -> str:
    """What this run's work cost: tokens and device-seconds, and the estimate at a price."""
    from bertetl.observe import estimate_cost

    tokens = sum(r.get("tokens", 0) for r in rows)
    seconds = sum(r.get("device_seconds", 0.0) for r in rows)
    cost = estimate_cost(seconds, cost_per_hour)
    estimate = "" if cost is None else f", estimated cost {cost:.4f}"
    return f"- cost: {tokens:,} tokens, {seconds:.1f} device-seconds{estimate}"


def _drift_lines(drift: RunDrift) -> list[str]:
    """The partitions to look at (or that there are none), and where the plot is."""
    report = drift.report
    if not report.partitions:
        return [f"No drift table: {report.note}."]
    flagged = report.flagged
    lines = [
        f"{len(flagged)} of {len(report.partitions)} partition(s) to look at: "
        f"{report.describe()}" + ("." if not flagged else ":"),
        *(f"- `{p.name}`: {p.reason}" for p in flagged),
    ]
    if drift.plot is not None:
        lines += ["", f"Label shares and drift per partition: `{drift.plot}`."]
    return lines


def publish_drift(title: str, drift: RunDrift) -> None:
    """The drift table (`bertetl-drift-partitions`) and a markdown artifact (`bertetl-drift`)
    naming the partitions to look at, with the plot embedded as a data URI (Prefect 3 has no
    artifact for an image file) and its path. Drift never fails a run: an artifact that
    cannot be created is a warning."""
    report = drift.report
    lines = [f"# Drift: {title}", "", *_drift_lines(drift)]
    try:
        if drift.plot is not None:
            data = base64.b64encode(drift.plot.read_bytes()).decode("ascii")
            lines += ["", f"![label shares and drift per partition](data:image/png;base64,{data})"]
        if report.partitions:
            create_table_artifact(
                report.records(), key="bertetl-drift-partitions", description=title
            )
        create_markdown_artifact("\n".join(lines), key="bertetl-drift", description=title)
    except Exception as e:  # drift is a report: the run goes on without it
        get_run_logger().warning("drift artifacts not published: %s: %s", type(e).__name__, e)


def finish_run(
    title: str,
    rows: list[dict[str, Any]],
    failures: dict[str, str],
    damaged: dict[str, str] | None = None,
    drift: RunDrift | None = None,
    cost_per_hour: float | None = None,
) -> list[dict[str, Any]] | State:
    """Publish the summary (and the drift, and the cost at `cost_per_hour`); the rows, or a
    Failed final state naming the failures (callers get the error, logs get no traceback)."""
    publish(title, rows, failures, damaged, drift, cost_per_hour)
    if failures:
        error = PartitionsFailedError(failures, rows)
        return Failed(message=str(error), data=error)
    return rows


def flow_run_parent() -> Parent | None:
    """The Prefect flow run this run is part of, as its OpenLineage parent (None outside
    a flow run)."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    return Parent(job_namespace(), str(flow_run.flow_name), str(flow_run.id))


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def publish_evaluation(title: str, metrics: dict[str, Any], report: str) -> None:
    """An evaluation's artifacts: a table (one row per label) and a markdown summary with the
    headline metrics, the worst confusions, any warnings and where the report is."""
    columns = ("label", "support", "predicted", "precision", "recall", "f1", "roc_auc")
    per_label = [
        {key: row[key] for key in (*columns, "average_precision")} for row in metrics["per_label"]
    ]  # per_label's figures, without multi-label's suggested_threshold record
    create_table_artifact(per_label, key="bertetl-evaluation-labels", description=title)
    rows = metrics["rows"]
    headline = [
        ("accuracy", metrics["accuracy"]),
        ("balanced accuracy", metrics["balanced_accuracy"]),
        ("macro F1", metrics["f1"].get("macro")),
        ("weighted F1", metrics["f1"].get("weighted")),
        ("ROC-AUC (macro, one-vs-rest)", metrics["roc_auc"]["macro"]),
        ("average precision (macro)", metrics["average_precision"]["macro"]),
        ("log loss", metrics["log_loss"]),
        ("expected calibration error", (metrics.get("calibration") or {}).get("ece")),
    ]
    lines = [
        f"# {title}",
        "",
        f"- model: `{metrics['about'].get('model') or 'predictions read from the table'}`",
        f"- rows evaluated: {rows['evaluated']:,} of {rows['total']:,} "
        f"({rows['without_label']:,} without a label, {rows['without_prediction']:,} "
        "without a prediction)",
        *(f"- {name}: {_figure(value)}" for name, value in headline),
        f"- report: `{report}`",
    ]
    if metrics["warnings"]:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in metrics["warnings"])]
    worst = metrics.get("worst_confusions") or []
    if worst:
        lines += ["", "## Worst confusions", ""]
        for entry in worst:
            if "true" in entry:
                lines.append(
                    f"- true `{entry['true']}` predicted `{entry['predicted']}`: {entry['count']}"
                )
            else:
                lines.append(
                    f"- `{entry['label']}`: missed {entry['missed']}, extra {entry['extra']}"
                )
    create_markdown_artifact("\n".join(lines), key="bertetl-evaluation", description=title)
