"""The evaluate flow publishes its artifacts; its on-demand deployment takes a parameter form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertetl.errors import InputError
from bertetl.evaluate.config import EvaluateConfig
from bertetl.flows.deployments import EVALUATE, build_deployments
from bertetl.flows.evaluate import EvaluateParams, evaluate_flow
from bertetl.flows.params import RunOptions
from tests.evaluate.tables import single_label_table
from tests.flows.test_partitioned import artifacts


@pytest.mark.usefixtures("prefect_harness")
def test_flow_writes_the_report_and_publishes_artifacts(write_table, tmp_path: Path) -> None:
    write_table(single_label_table(["neg", "pos", "pos"] * 8, ["neg", "pos"]))
    params = EvaluateParams(
        table=str(tmp_path / "src"),
        out=str(tmp_path / "out"),
        evaluate=EvaluateConfig(label_column="y", text_column="text"),
        run=RunOptions(retries=0),
    )
    state = evaluate_flow(params, return_state=True)
    assert state.is_completed()
    metrics = state.result()
    assert metrics == json.loads((tmp_path / "out" / "metrics.json").read_text())
    run_id = state.state_details.flow_run_id
    (summary,) = artifacts(run_id, "bertetl-evaluation")
    assert summary["type"] == "markdown"
    assert f"- accuracy: {metrics['accuracy']:.4f}" in summary["data"]
    assert str(tmp_path / "out" / "report.html") in summary["data"]
    (table,) = artifacts(run_id, "bertetl-evaluation-labels")
    assert table["type"] == "table"
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [(r["label"], r["support"]) for r in rows] == [("neg", 8), ("pos", 16)]


@pytest.mark.usefixtures("prefect_harness")
def test_a_bad_table_fails_the_flow_with_the_cause(write_table, tmp_path: Path) -> None:
    write_table({"text": ["a"], "sentiment": ["b"]})
    params = EvaluateParams(
        table=str(tmp_path / "src"),
        out=str(tmp_path / "out"),
        evaluate=EvaluateConfig(label_column="y", text_column="text"),
        run=RunOptions(retries=0),
    )
    state = evaluate_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match="label column 'y' not found"):
        state.result()


def test_on_demand_deployment_has_a_parameter_form() -> None:
    [deployment] = [d for d in build_deployments() if f"{d.flow_name}/{d.name}" == EVALUATE]
    assert not deployment.schedules
    schema = deployment._parameter_openapi_schema.model_dump()
    assert schema["properties"]["params"]["$ref"] == "#/definitions/EvaluateParams"
    fields = schema["definitions"]["EvaluateParams"]["properties"]
    assert {"table", "out", "evaluate"} <= set(fields)
    assert "label_column" in schema["definitions"]["EvaluateConfig"]["properties"]


@pytest.mark.usefixtures("prefect_harness")
def test_flow_evaluates_a_table_on_s3_as_it_does_a_local_one(
    write_table, tmp_path: Path, bucket: str, storage: dict[str, str]
) -> None:
    from bertetl.io.stores.locations import parse_location
    from tests.runs.test_object_store import upload_tree

    write_table(single_label_table(["neg", "pos", "pos"] * 8, ["neg", "pos"], seed=3))
    uri = f"s3://{bucket}/labelled"
    upload_tree(tmp_path / "src", parse_location(uri, storage))
    config = EvaluateConfig(label_column="y", text_column="text")
    outcomes = {}
    for name, table, options in (("local", str(tmp_path / "src"), {}), ("s3", uri, storage)):
        params = EvaluateParams(
            table=table,
            out=str(tmp_path / name),
            evaluate=config,
            run=RunOptions(retries=0),
            storage_options=options,
        )
        outcomes[name] = evaluate_flow(params)
    assert outcomes["s3"]["about"]["table"] == uri
    drop = lambda metrics: {k: v for k, v in metrics.items() if k != "about"}  # noqa: E731
    assert drop(outcomes["s3"]) == drop(outcomes["local"])
    assert outcomes["s3"]["rows"]["total"] == 24
