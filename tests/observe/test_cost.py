"""Cost per partition and per run: the manifests' figures, the estimate, `summary --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.io.manifest import Manifest
from bertetl.observe.cost import estimate_cost, manifests_cost
from tests.cli.test_cli import bertetl


def test_estimate_is_device_hours_times_price() -> None:
    assert estimate_cost(5400.0, 2.0) == pytest.approx(3.0)
    assert estimate_cost(5400.0, None) is None


def test_manifests_cost_adds_up_per_partition() -> None:
    manifests = [
        ("2026-01-01", Manifest(partition_column="d", partition="1", rows_out=10, tokens=70,
                                device_seconds=1800.0)),
        ("2026-01-02", Manifest(partition_column="d", partition="2", rows_out=5, tokens=30,
                                device_seconds=1800.0)),
    ]  # fmt: skip
    rows = manifests_cost(manifests, cost_per_hour=4.0)
    assert rows[-1] == {
        "partition": "total", "rows": 15, "tokens": 100, "device_seconds": 3600.0,
        "estimated_cost": 4.0,
    }  # fmt: skip
    assert [r["estimated_cost"] for r in rows[:2]] == [2.0, 2.0]


def test_an_old_manifest_reads_with_no_cost() -> None:
    old = '{"version": 2, "partition_column": "d", "partition": "1", "rows_out": 3}'
    manifest = Manifest.model_validate_json(old)
    assert (manifest.tokens, manifest.device_seconds) == (0, 0.0)


def test_enrich_report_and_summary_json(tmp_path: Path, tiny_embed_dir: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a movie that was good", "a dog", "   "]}), source)
    report = tmp_path / "report.json"
    run = bertetl(
        "enrich", str(source), str(tmp_path / "out"), "--embed-model", str(tiny_embed_dir),
        "--text-column", "text", "--report", str(report), "--cost-per-hour", "3600",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    figures = json.loads(report.read_text())
    assert figures["tokens"] == sum(f["tokens"] for f in figures["files"]) > 0
    assert figures["estimated_cost"] == pytest.approx(figures["device_seconds"], abs=1e-3)
    summary = bertetl("summary", str(tmp_path / "out"), "--json")
    assert summary.returncode == 0, summary.stderr
    parsed = json.loads(summary.stdout)
    assert parsed["cost"] == []  # no manifests: an enrich DEST
    assert sum(row["rows"] for row in parsed["rows"]) == 3
    assert sum(row["not_encoded"] for row in parsed["rows"]) == 1  # the blank text
