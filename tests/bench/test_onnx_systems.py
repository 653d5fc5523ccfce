"""The ONNX Runtime systems of `bertetl bench`, beside the torch engine in one report."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertetl.bench.systems import BenchConfig, format_table, run_bench

pytest.importorskip("onnxruntime")


@pytest.mark.slow  # run_bench, as the other bench tests
def test_onnx_systems_report_their_cosine_to_fp32(
    tiny_embed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BERTETL_CACHE", str(tmp_path / "cache"))
    systems = ["engine-e2e", "engine-e2e-onnx", "engine-e2e-onnx-int8"]
    config = BenchConfig(
        models=[str(tiny_embed_dir)],
        inputs=["reviews"],
        rows=24,
        repeats=1,
        systems=systems,
        device="cpu",
        workdir=str(tmp_path / "work"),
        isolate=False,
    )
    report = run_bench(config)
    assert report["errors"] == []
    by_system = {r["system"]: r for r in report["results"]}
    assert list(by_system) == systems
    assert by_system["engine-e2e-onnx"]["onnx_cosine_min"] >= 0.9999
    assert 0.9 <= by_system["engine-e2e-onnx-int8"]["int8_cosine_mean"] <= 1.0
    assert "int8_cosine_mean" not in by_system["engine-e2e"]
    table = format_table(report)
    assert "engine-e2e-onnx-int8" in table and "cos fp32" in table
