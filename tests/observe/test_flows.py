"""The partitioned flows report to the platform: OpenLineage events whose parent is the
Prefect flow run, and one Pushgateway group per run, pushed after each partition."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.flows.enrich import enrich_flow
from bertetl.flows.params import BackfillParams, EnrichParams, IncrementalParams, RunOptions
from bertetl.flows.partitioned import backfill_flow, incremental_flow
from bertetl.io.manifest import read_manifest
from bertetl.observe import ObserveOptions
from tests.conftest import write_partitioned
from tests.flows.test_partitioned import artifacts
from tests.observe.conftest import read_metrics
from tests.observe.test_lineage import validate

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAST = RunOptions(retries=0, retry_delay_seconds=0)


def test_backfill_fails_then_incremental_completes(
    tiny_embed_dir: Path, pushgateway: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "lineage.jsonl"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(log))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    src, dest = write_partitioned(tmp_path / "src", days=4, rows=24), tmp_path / "dest"
    broken = src / "date=2026-01-02" / "part-0.parquet"
    good = broken.read_bytes()
    broken.write_bytes(b"not parquet at all")
    engine = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    common = {"source": str(src), "dest": str(dest), "partition_column": "date"}
    observe = ObserveOptions(pushgateway=pushgateway, cost_per_hour=3600.0)
    state = backfill_flow(
        BackfillParams(**common, engine=engine, run=FAST, observe=observe), return_state=True
    )
    assert state.is_failed()
    flow_run = str(state.state_details.flow_run_id)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    for event in events:
        validate(event)
        assert event["run"]["facets"]["parent"]["run"]["runId"] == flow_run
        assert event["run"]["facets"]["parent"]["job"]["name"] == "bertetl-backfill"
    assert "date=2026-01-02" in events[1]["run"]["facets"]["errorMessage"]["message"]

    group = frozenset({("job", "bertetl"), ("instance", str(dest))})
    metrics = read_metrics(pushgateway)

    def value(name: str, **labels: str) -> float:
        return metrics[(name, group | frozenset(labels.items()))]

    committed = [pq.read_table(m.parent) for m in sorted(dest.glob("*/_manifest.json"))]
    texts = [t for table in committed for t in table.column("text").to_pylist()]
    blank = sum(1 for t in texts if t is None or not t.strip())
    assert value("bertetl_partitions_total", outcome="committed") == 3
    assert value("bertetl_partitions_total", outcome="failed") == 1
    assert value("bertetl_rows_total", outcome="inferred") == len(texts) - blank
    assert value("bertetl_rows_total", outcome="failed") >= blank
    assert value("bertetl_tokens_total") > 0
    assert ("bertetl_last_success_timestamp_seconds", group) not in metrics

    broken.write_bytes(good)  # fixed: the nightly run picks up only that partition
    log.unlink()
    state = incremental_flow(
        IncrementalParams(**common, engine=engine, run=FAST, observe=observe), return_state=True
    )
    assert state.is_completed()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    metrics = read_metrics(pushgateway)  # the run's own group replaced the failed run's
    assert value("bertetl_partitions_total", outcome="committed") == 1
    assert value("bertetl_partitions_total", outcome="skipped") == 3
    assert value("bertetl_rows_total", outcome="inferred") == 24 - 2  # a null and a blank
    assert value("bertetl_last_success_timestamp_seconds") > 0
    # the run's cost in its Prefect report: its manifest's device-seconds at 1 per second
    (report,) = artifacts(state.state_details.flow_run_id, "bertetl-report")
    manifest = read_manifest(dest / "date=2026-01-02")
    assert manifest.tokens > 0
    assert f"- cost: {manifest.tokens:,} tokens" in report["data"]
    assert f"estimated cost {manifest.device_seconds:.4f}" in report["data"]


def test_enrich_flow_reports_lineage_metrics_and_cost(
    tiny_embed_dir: Path, pushgateway: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "lineage.jsonl"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(log))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    src, dest = write_partitioned(tmp_path / "src", days=2, rows=12), tmp_path / "dest"
    params = EnrichParams(
        source=str(src),
        dest=str(dest),
        engine=EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)),
        run=FAST,
        observe=ObserveOptions(pushgateway=pushgateway),
    )
    state = enrich_flow(params, return_state=True)
    assert state.is_completed()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    for event in events:
        validate(event)
        assert event["job"]["name"] == f"enrich:{dest}"
        parent = event["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == str(state.state_details.flow_run_id)
    metrics = read_metrics(pushgateway)
    group = frozenset({("job", "bertetl"), ("instance", str(dest))})
    written = pq.read_table(dest).column("text").to_pylist()
    blank = sum(1 for t in written if t is None or not t.strip())
    assert len(written) == 24
    assert metrics[("bertetl_rows_total", group | {("outcome", "failed")})] == blank
    assert metrics[("bertetl_rows_total", group | {("outcome", "inferred")})] == 24 - blank
    assert metrics[("bertetl_last_success_timestamp_seconds", group)] > 0
