"""Deployments: their shape, and one run of the served backfill through a real Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bertetl.flows.deployments import (
    BACKFILL,
    ENRICH,
    EVALUATE,
    NIGHTLY,
    build_deployments,
    nightly_parameters,
)
from bertetl.flows.params import IncrementalParams

REPO = Path(__file__).resolve().parents[2]


def test_build_deployments_names_schedule_and_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BERTETL_SOURCE", raising=False)
    monkeypatch.delenv("BERTETL_DEST", raising=False)
    monkeypatch.setenv("BERTETL_CRON", "30 3 * * *")
    deployments = build_deployments()
    names = [f"{d.flow_name}/{d.name}" for d in deployments]
    assert names == [NIGHTLY, ENRICH, BACKFILL, EVALUATE]

    nightly, enrich, backfill, _ = deployments  # evaluate's form: tests/flows/test_evaluate.py
    assert [s.schedule.cron for s in nightly.schedules] == ["30 3 * * *"]
    assert not enrich.schedules and not backfill.schedules
    params = nightly.parameters["params"]
    assert params["source"] == "demo-data/partitioned"
    assert params["partition_column"] == "date"
    assert params["engine"] == {"text_column": "text", "embed_model": "minilm"}

    for deployment, model in zip(
        deployments[:3], ["Incremental", "Enrich", "Backfill"], strict=True
    ):
        # RunnerDeployment keeps the schema private; it is sent as `parameter_openapi_schema`.
        schema = deployment._parameter_openapi_schema.model_dump()
        assert schema["required"] == ["params"]
        assert schema["properties"]["params"]["$ref"] == f"#/definitions/{model}Params"
        fields = schema["definitions"][f"{model}Params"]["properties"]
        assert {"source", "dest", "engine"} <= set(fields)
        assert "text_column" in schema["definitions"]["EngineConfig"]["properties"]
    backfill_fields = backfill._parameter_openapi_schema.definitions["BackfillParams"]
    assert {"partition_column", "start", "end"} <= set(backfill_fields["properties"])


def test_nightly_parameters_from_environment() -> None:
    env = {
        "BERTETL_SOURCE": "/data/src",
        "BERTETL_DEST": "/data/out",
        "BERTETL_PARTITION_COLUMN": "day",
        "BERTETL_TEXT_COLUMN": "body",
        "BERTETL_EMBED_MODEL": "",
        "BERTETL_CLASSIFY_MODEL": "/models/sentiment",
    }
    assert nightly_parameters(env) == {
        "params": {
            "source": "/data/src",
            "dest": "/data/out",
            "partition_column": "day",
            "engine": {"text_column": "body", "classify_model": "/models/sentiment"},
        }
    }


def test_nightly_parameters_with_a_key_make_a_keyed_run() -> None:
    env = {"BERTETL_SOURCE": "/data/src", "BERTETL_DEST": "/data/out", "BERTETL_KEY": "id,lang"}
    params = IncrementalParams.model_validate(nightly_parameters(env)["params"])
    assert params.key == ["id", "lang"]
    assert params.partition_column is None


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in paths)


#: Seconds a served deployment may take to register. Alone it takes ~10 s here; on a loaded
#: 2-core CI machine one run took over 60 s, so the bound only catches a real hang.
READY_WITHIN = 240


def _wait(
    what: str, ready: Callable[[], bool], process: subprocess.Popen, logs: list[Path]
) -> None:
    """Poll `ready` until it holds; fail with the logs if `process` exits first or it does not
    hold within `READY_WITHIN` seconds (generous: CI's 2 cores run three test workers)."""
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not ready (exit code {process.poll()})\n{_logs(logs)}")


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


SERVE = """
from prefect import serve
from bertetl.flows.deployments import BACKFILL, build_deployments
serve(*[d for d in build_deployments() if f"{d.flow_name}/{d.name}" == BACKFILL])
"""

TRIGGER = """
import json, sys
from prefect.deployments import run_deployment
from bertetl.flows.deployments import BACKFILL

run = run_deployment(
    name=BACKFILL, parameters=json.loads(sys.argv[1]), timeout=150, poll_interval=1
)
print(json.dumps({"id": str(run.id), "state": run.state.type.value, "message": run.state.message}))
"""


@pytest.mark.slow
def test_served_backfill_runs_through_a_prefect_server(
    prefect_harness: dict, tmp_path: Path, tiny_embed_dir: Path, write_table: Callable[..., Path]
) -> None:
    """A deployment served by `serve` in one process and triggered from another, through the
    session's Prefect server (a real one on loopback, as `prefect server start` runs)."""
    source, dest = tmp_path / "src", tmp_path / "dest"
    for day in (1, 2, 3):
        texts = [f"review {i} of day {day} was good and fun" for i in range(5 + day)]
        write_table(
            {"id": list(range(len(texts))), "text": texts},
            f"src/date=2026-01-0{day}/part-0.parquet",
        )

    api = prefect_harness["url"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BERTETL_"))}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONUNBUFFERED": "1",  # its log is whole even when the test stops it
    }
    client_env = env | {"PREFECT_API_URL": api}
    logs = [Path(prefect_harness["log"]), tmp_path / "serve.log"]
    serve = None
    try:
        with logs[1].open("wb") as log:
            serve = subprocess.Popen(
                [sys.executable, "-c", SERVE],
                env=client_env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        flow_name, name = BACKFILL.split("/")
        url = f"{api}/deployments/name/{flow_name}/{name}"
        _wait(
            "served deployment", lambda: httpx.get(url, timeout=10).status_code == 200, serve, logs
        )
        deployment = httpx.get(url, timeout=30).json()
        schema = deployment["parameter_openapi_schema"]
        assert "BackfillParams" in schema["definitions"]

        parameters = {
            "params": {
                "source": str(source),
                "dest": str(dest),
                "partition_column": "date",
                "engine": {
                    "text_column": "text",
                    "embed_model": str(tiny_embed_dir),
                    "device": "cpu",
                },
                "run": {"retries": 0},
            }
        }
        trigger = subprocess.run(
            [sys.executable, "-c", TRIGGER, json.dumps(parameters)],
            env=client_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
        if trigger.returncode:
            pytest.fail(f"trigger failed:\n{trigger.stderr[-4000:]}\n{_logs(logs)}")
        result = json.loads(trigger.stdout.strip().splitlines()[-1])
        if result["state"] != "COMPLETED":
            pytest.fail(f"flow run ended {result}\n{_logs(logs)}")

        for day in (1, 2, 3):
            partition = dest / f"date=2026-01-0{day}"
            assert (partition / "_manifest.json").is_file()
            assert list(partition.glob("*.parquet"))

        run = httpx.get(f"{api}/flow_runs/{result['id']}", timeout=30).json()
        assert run["state"]["type"] == "COMPLETED"
        # REST rather than PrefectClient.read_artifacts: the client sends `"limit": null`, which
        # this server (prefect 3.8 on fastapi 0.154) rejects with a 422.
        response = httpx.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [result["id"]]}}},
            timeout=30,
        )
        response.raise_for_status()
        artifacts = {a["key"]: a for a in response.json()}
        assert artifacts["bertetl-progress"]["type"] == "progress"
        assert artifacts["bertetl-progress"]["data"] == 100.0
        assert artifacts["bertetl-summary"]["type"] == "table"
        summary = artifacts["bertetl-summary"]["data"]
        summary = json.loads(summary) if isinstance(summary, str) else summary
        assert [row["status"] for row in summary] == ["committed"] * 3
        assert artifacts["bertetl-report"]["type"] == "markdown"
    finally:
        _stop(serve)
