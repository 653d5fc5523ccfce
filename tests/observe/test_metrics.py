"""`--pushgateway`: a run's metrics in a real Prometheus Pushgateway, checked against the
input itself (rows in the file, blank texts counted here)."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bertetl.observe.metrics import PushgatewayPusher, RunFigures
from tests.cli.test_cli import bertetl
from tests.observe.conftest import free_port, read_metrics

TEXTS = ["a movie that was good", None, "   ", "the quick brown fox", "hello", "", "dogs"]


def _blank(table: pa.Table) -> int:
    """Rows whose text is null, empty or blank: an independent count of `enrich_error` rows."""
    text = table.column("text")
    stripped = pc.utf8_trim_whitespace(text)
    return text.null_count + int(pc.sum(pc.equal(stripped, "")).as_py() or 0)


def test_enrich_pushes_its_rows_tokens_and_success(
    pushgateway: str, tmp_path: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": range(len(TEXTS)), "text": TEXTS}), source)
    dest = tmp_path / "out"
    run = bertetl(
        "enrich", str(source), str(dest), "--embed-model", str(tiny_embed_dir),
        "--text-column", "text",
        "--pushgateway", pushgateway,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    metrics = read_metrics(pushgateway)
    group = {("job", "bertetl"), ("instance", str(dest))}

    def value(name: str, **labels: str) -> float:
        return metrics[(name, frozenset(group | set(labels.items())))]

    table = pq.read_table(source)
    rows = {o: value("bertetl_rows_total", outcome=o) for o in ("inferred", "reused", "failed")}
    assert sum(rows.values()) + value("bertetl_rows_total", outcome="deduplicated") == len(table)
    assert rows["failed"] == _blank(table)
    assert rows["inferred"] == len(table) - _blank(table)
    assert value("bertetl_tokens_total") > 0
    assert value("bertetl_model_seconds_total") > 0
    assert value("bertetl_last_success_timestamp_seconds") > 0
    assert value("bertetl_run_duration_seconds") > 0


def test_partition_figures_add_up_in_the_gateway(pushgateway: str) -> None:
    """Two pushes of one run's group: the second replaces the first (one group per run)."""
    pusher = PushgatewayPusher(pushgateway, "s3://bucket/enriched")
    figures = RunFigures()
    figures.partitions["committed"] = 1
    figures.add_rows(inferred=20, reused=2, failed=2)
    pusher.push(figures)
    figures.partitions["failed"] = 1
    figures.add_rows(0, 0, 24)
    pusher.push(figures)
    metrics = read_metrics(pushgateway)
    group = {("job", "bertetl"), ("instance", "s3://bucket/enriched")}
    assert metrics[("bertetl_rows_total", frozenset(group | {("outcome", "failed")}))] == 26
    assert metrics[("bertetl_partitions_total", frozenset(group | {("outcome", "failed")}))] == 1
    # not a success: no last-success time in the group
    assert ("bertetl_last_success_timestamp_seconds", frozenset(group)) not in metrics


def test_an_unreachable_gateway_is_a_warning(
    tmp_path: Path, tiny_embed_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a movie", "a dog"]}), source)
    gateway = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING):
        run = bertetl(
            "enrich", str(source), str(tmp_path / "out"), "--embed-model", str(tiny_embed_dir),
            "--text-column", "text",
            "--pushgateway", gateway,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert pq.read_table(tmp_path / "out").num_rows == 2
    assert any("metrics not pushed" in r.message for r in caplog.records)
