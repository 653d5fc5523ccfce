"""The analyst-triggered evaluate flow: a classifier against a labelled table's true labels.

A thin flow over `bertetl.evaluate`: one retried task runs the evaluation (the model through
the engine, or the table's own predictions), and the flow publishes a markdown summary and a
per-label table as Prefect artifacts; the report itself (metrics.json, plots, report.html) is
in `out`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from bertetl.evaluate.config import EvaluateConfig
from bertetl.evaluate.run import REPORT, evaluate
from bertetl.flows.params import RunOptions, storage_options_field
from bertetl.flows.publish import publish_evaluation
from bertetl.flows.tasks import quiet_user_errors, retry_transient, with_retries


class EvaluateParams(BaseModel):
    """One evaluation: TABLE's true labels against a model (or the table's predictions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str = Field(
        description="Labelled Parquet file, folder or glob; or an s3://, gs:// or abfs:// URI "
        "(with storage_options)."
    )
    out: str = Field(
        description="Folder for metrics.json, the plots and report.html: new, empty, or an "
        "earlier evaluation (replaced)."
    )
    evaluate: EvaluateConfig
    run: RunOptions = RunOptions()
    storage_options: dict[str, str] = storage_options_field()


@task(name="evaluate-table", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def evaluate_task(
    table: str, out: str, config: EvaluateConfig, storage_options: dict[str, str]
) -> dict[str, Any]:
    """Run the evaluation and write the report; the metrics document."""
    return evaluate(table, out, config, storage_options or None).metrics


@flow(name="bertetl-evaluate")
def evaluate_flow(params: EvaluateParams) -> dict[str, Any]:
    """Evaluate a classifier on a labelled table; the metrics document (metrics.json)."""
    quiet_user_errors()
    metrics = with_retries(evaluate_task, params.run)(
        params.table, params.out, params.evaluate, params.storage_options
    )
    publish_evaluation(f"evaluate {params.table}", metrics, f"{params.out}/{REPORT}")
    return metrics
