"""OpenLineage events of a run, through the client's file transport and its HTTP transport
(a receiver on loopback), validated against the spec's JSON schemas (tests/data/openlineage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tests.cli.test_cli import bertetl

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "openlineage"


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def validate(event: dict[str, Any]) -> None:
    """The event against OpenLineage.json's RunEvent, and each spec facet against its own
    schema (found by its `_schemaURL`); custom facets against the base facet."""
    registry = _registry()
    spec = registry.contents("https://openlineage.io/spec/2-0-2/OpenLineage.json")
    Draft202012Validator(spec, registry=registry).validate(event)
    facets = [
        *event["run"]["facets"].values(),
        *event["job"]["facets"].values(),
        *(f for d in event["inputs"] + event["outputs"] for f in d["facets"].values()),
    ]
    for facet in facets:
        url = facet["_schemaURL"]
        if url.startswith("https://openlineage.io/spec/facets/"):
            Draft202012Validator({"$ref": url}, registry=registry).validate(facet)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "part.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["a movie", "a dog", None]}), path)
    return path


def _enrich(source: Path, dest: Path, model: Path) -> Any:
    return bertetl(
        "enrich", str(source), str(dest), "--embed-model", str(model), "--text-column", "text"
    )


def test_file_transport_gets_start_and_complete(
    source: Path, tmp_path: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "lineage.jsonl"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(log))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    dest = tmp_path / "out"
    run = _enrich(source, dest, tiny_embed_dir)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert events[0]["run"]["runId"] == events[1]["run"]["runId"]
    for event in events:
        validate(event)
    done = events[1]
    assert done["inputs"][0]["namespace"] == "file"
    assert done["inputs"][0]["name"] == str(source.resolve())
    assert done["outputs"][0]["name"] == str(dest.resolve())
    written = pq.read_schema(dest / "part.parquet")
    output = done["outputs"][0]["facets"]
    assert [f["name"] for f in output["schema"]["fields"]] == written.names
    added = set(written.names) - {"id", "text"}
    lineage = output["columnLineage"]["fields"]
    assert set(lineage) == added
    assert all(f["inputFields"][0]["field"] == "text" for f in lineage.values())
    model = done["run"]["facets"]["bertetl_model_embed"]
    assert (model["name"], model["task"]) == (tiny_embed_dir.name, "embed")
    assert len(model["fingerprint"]) >= 16


def test_http_transport_gets_a_fail_with_its_cause(
    source: Path, tmp_path: Path, tiny_embed_dir: Path, lineage_receiver: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    host, port = lineage_receiver.server_address
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://{host}:{port}")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "part.parquet").write_text("not bertetl's")  # refused: a foreign file at the output
    run = _enrich(source, dest, tiny_embed_dir)
    assert run.returncode == 1
    events = lineage_receiver.events
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    for event in events:
        validate(event)
    message = events[1]["run"]["facets"]["errorMessage"]["message"]
    assert "\n" not in message and "part.parquet" in message


def test_nothing_is_emitted_without_a_configuration(
    source: Path, tmp_path: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertetl.observe.lineage import lineage_configured

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in [k for k in __import__("os").environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)
    assert not lineage_configured()
    run = _enrich(source, tmp_path / "out", tiny_embed_dir)
    assert run.returncode == 0, run.stderr
    assert "OpenLineage" not in run.stderr


def test_evaluate_names_its_table_report_folder_and_model(
    tiny_classifier_dir: Path, tmp_path: Path, lineage_receiver: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    host, port = lineage_receiver.server_address
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://{host}:{port}")
    table = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"text": ["good film", "bad film"], "y": ["positive"] * 2}), table)
    run = bertetl(
        "evaluate", str(table), "--label-column", "y", "--text-column", "text",
        "--out", str(tmp_path / "report"), "--classify-model", str(tiny_classifier_dir),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    events = lineage_receiver.events
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    for event in events:
        validate(event)
    done = events[1]
    assert done["job"]["name"].startswith("evaluate:")
    assert done["inputs"][0]["name"] == str(table.resolve())
    assert [f["name"] for f in done["inputs"][0]["facets"]["schema"]["fields"]] == ["text", "y"]
    assert done["outputs"][0]["name"] == str((tmp_path / "report").resolve())
    assert "columnLineage" not in done["outputs"][0]["facets"]
    assert done["run"]["facets"]["bertetl_model_classify"]["name"] == tiny_classifier_dir.name


def test_a_missing_model_still_gets_start_and_fail(
    source: Path, tmp_path: Path, lineage_receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = lineage_receiver.server_address
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://{host}:{port}")
    run = _enrich(source, tmp_path / "out", tmp_path / "no-such-model")
    assert run.returncode != 0
    events = lineage_receiver.events
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    for event in events:
        validate(event)
    assert "no-such-model" in events[1]["run"]["facets"]["errorMessage"]["message"]
