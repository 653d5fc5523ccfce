"""A run's metrics for the platform: pushed to a Prometheus Pushgateway (the convention for
batch jobs: one group per run, `job="bertetl"`, `instance` = DEST, replaced on each push), or,
where `OTEL_EXPORTER_OTLP_ENDPOINT` is set, sent through OpenTelemetry's OTLP exporter instead.

Both are pushed after each partition and at the end; a gateway or collector that cannot be
reached is a warning, never a failed run. The figures are the run's own (`RunFigures`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

JOB = "bertetl"
ROW_OUTCOMES = ("inferred", "reused", "deduplicated", "failed")
PARTITION_OUTCOMES = ("committed", "skipped", "failed")
#: The metrics, with their help (docs/OPERATING.md lists them for Grafana).
HELP = {
    "bertetl_rows_total": "Rows read by the run, by outcome (they add up to the rows read).",
    "bertetl_tokens_total": "Real (unpadded) tokens the models saw.",
    "bertetl_model_seconds_total": "Seconds the models ran on the device (GPU or CPU).",
    "bertetl_partitions_total": "Partitions of the run, by outcome.",
    "bertetl_run_duration_seconds": "Seconds since the run started.",
    "bertetl_last_success_timestamp_seconds": "Unix time the run last finished without failure.",
}


@dataclass
class RunFigures:
    """What a run did so far: rows by outcome, tokens, device-seconds, partitions by outcome."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROW_OUTCOMES, 0))
    tokens: int = 0
    device_seconds: float = 0.0
    partitions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTITION_OUTCOMES, 0))
    started: float = field(default_factory=time.time)
    succeeded: float | None = None

    def add_rows(self, inferred: int, reused: int, failed: int, deduplicated: int = 0) -> None:
        for outcome, count in zip(
            ROW_OUTCOMES, (inferred, reused, deduplicated, failed), strict=True
        ):
            self.rows[outcome] += count

    @property
    def duration(self) -> float:
        return (self.succeeded or time.time()) - self.started


class Pusher:
    """Where figures go: `push(figures)` after each partition and at the end."""

    def push(self, figures: RunFigures) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Send what is left and stop."""


class PushgatewayPusher(Pusher):
    """The figures as one Pushgateway group (`job="bertetl"`, `instance` = DEST)."""

    def __init__(self, gateway: str, instance: str) -> None:
        self.gateway, self.instance = gateway, instance

    def push(self, figures: RunFigures) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway

        registry = CollectorRegistry()

        def counter(name: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name.removesuffix("_total"), HELP[name], labels, registry=registry)

        def gauge(name: str) -> Any:
            return Gauge(name, HELP[name], registry=registry)

        # a fresh registry per push: the run's totals so far, and each push replaces the group
        rows = counter("bertetl_rows_total", ("outcome",))
        for outcome, count in figures.rows.items():
            rows.labels(outcome).inc(count)
        counter("bertetl_tokens_total").inc(figures.tokens)
        counter("bertetl_model_seconds_total").inc(figures.device_seconds)
        partitions = counter("bertetl_partitions_total", ("outcome",))
        for outcome, count in figures.partitions.items():
            partitions.labels(outcome).inc(count)
        gauge("bertetl_run_duration_seconds").set(figures.duration)
        if figures.succeeded is not None:
            gauge("bertetl_last_success_timestamp_seconds").set(figures.succeeded)
        try:
            push_to_gateway(
                self.gateway, job=JOB, registry=registry, grouping_key={"instance": self.instance}
            )
        except OSError as e:  # URLError, refused, timed out: the run goes on
            log.warning("metrics not pushed to the Pushgateway %s: %s", self.gateway, e)


class OtlpPusher(Pusher):
    """The same figures through OpenTelemetry's OTLP (HTTP) exporter, configured by its own
    `OTEL_EXPORTER_OTLP_*` variables; sent on each push (`force_flush`)."""

    def __init__(self, instance: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(), export_interval_millis=24 * 3600 * 1000
        )
        resource = Resource.create({"service.name": JOB, "service.instance.id": instance})
        self.provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = self.provider.get_meter("bertetl")
        # counters (their Prometheus names gain `_total` again), fed the growth since the
        # last push; the duration and the last success are gauges
        self.counters = {
            name: meter.create_counter(name.removesuffix("_total"), description=text)
            for name, text in HELP.items()
            if name.endswith("_total")
        }
        self.gauges = {
            name: meter.create_gauge(name, description=text)
            for name, text in HELP.items()
            if not name.endswith("_total")
        }
        self.sent: dict[tuple[str, str], float] = {}

    def _add(self, name: str, value: float, outcome: str = "") -> None:
        growth = value - self.sent.get((name, outcome), 0)
        self.sent[(name, outcome)] = value
        self.counters[name].add(growth, {"outcome": outcome} if outcome else {})

    def push(self, figures: RunFigures) -> None:
        for outcome, count in figures.rows.items():
            self._add("bertetl_rows_total", count, outcome)
        for outcome, count in figures.partitions.items():
            self._add("bertetl_partitions_total", count, outcome)
        self._add("bertetl_tokens_total", figures.tokens)
        self._add("bertetl_model_seconds_total", figures.device_seconds)
        self.gauges["bertetl_run_duration_seconds"].set(figures.duration)
        if figures.succeeded is not None:
            self.gauges["bertetl_last_success_timestamp_seconds"].set(figures.succeeded)
        if not self.provider.force_flush(timeout_millis=10_000):
            log.warning("metrics not sent to the OTLP endpoint (see the exporter's warning)")

    def close(self) -> None:
        self.provider.shutdown()


def make_pusher(gateway: str | None, instance: str) -> Pusher | None:
    """OTLP where `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else the Pushgateway when one is
    given, else None (no metrics)."""
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ):
        try:
            return OtlpPusher(instance)
        except ImportError as e:
            log.warning("OTLP metrics not sent: %s (pip install 'bertetl[observe]')", e)
            return None
    return PushgatewayPusher(gateway, instance) if gateway else None
