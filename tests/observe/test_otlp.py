"""With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the run's metrics go out through OpenTelemetry's
OTLP (HTTP, protobuf) exporter instead of the Pushgateway: a receiver on loopback decodes them
with the OTLP protobuf messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli.test_cli import bertetl


def _points(bodies: list[tuple[str, bytes]]) -> dict[tuple[str, str], float]:
    """The last value of each (metric, outcome) in the OTLP requests received."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    values: dict[tuple[str, str], float] = {}
    for path, body in bodies:
        assert path == "/v1/metrics"
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    data = metric.sum if metric.HasField("sum") else metric.gauge
                    for point in data.data_points:
                        labels = {a.key: a.value.string_value for a in point.attributes}
                        number = point.as_double if point.HasField("as_double") else point.as_int
                        values[(metric.name, labels.get("outcome", ""))] = number
    return values


def test_enrich_sends_its_metrics_over_otlp(
    tmp_path: Path, tiny_embed_dir: Path, lineage_receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = lineage_receiver.server_address
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{host}:{port}")
    source = tmp_path / "in.parquet"
    texts = ["a movie that was good", None, "a dog", "  "]
    pq.write_table(pa.table({"text": texts}), source)
    run = bertetl(
        "enrich", str(source), str(tmp_path / "out"), "--embed-model", str(tiny_embed_dir),
        "--text-column", "text",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    values = _points(lineage_receiver.bodies)
    assert values[("bertetl_rows", "inferred")] == 2
    assert values[("bertetl_rows", "failed")] == 2  # a null and a blank text
    assert values[("bertetl_tokens", "")] > 0
    assert values[("bertetl_last_success_timestamp_seconds", "")] > 0
