"""`bertetl bench`: one subcommand per benchmark, each mapping its options onto its config;
the benchmarks themselves are replaced by recorders (they are tested on their own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import bertetl.bench.systems as systems
from bertetl.bench.systems import BenchConfig
from bertetl.cli import app

REPORT = {"environment": {"device": "cpu"}, "results": [], "errors": []}


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[BenchConfig]:
    """The configs `run_bench` was called with (it returns an empty report)."""
    configs: list[BenchConfig] = []

    def run_bench(config: BenchConfig) -> dict[str, Any]:
        configs.append(config)
        return REPORT

    monkeypatch.setattr(systems, "run_bench", run_bench)
    return configs


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_bench_alone_runs_the_systems_bench_with_its_defaults(
    ran: list[BenchConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # it writes bench.json where it runs
    result = invoke("bench")
    assert result.exit_code == 0, result.output
    assert ran == [BenchConfig()]
    assert (tmp_path / "bench.json").is_file()


def test_systems_maps_its_options(ran: list[BenchConfig], tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    args = ["--models", "minilm,bert-base", "--inputs", "reviews", "--systems", "engine-e2e"]
    args += ["--rows", "7", "--repeats", "2", "--device", "cpu", "--batch-tokens", "512"]
    args += ["--ner-aggregation", "max", "--long-text", "window", "--out", str(out)]
    result = invoke("bench", "systems", *args)
    assert result.exit_code == 0, result.output
    assert ran == [
        BenchConfig(
            models=["minilm", "bert-base"],
            inputs=["reviews"],
            systems=["engine-e2e"],
            rows=7,
            repeats=2,
            device="cpu",
            batch_tokens=512,
            ner_aggregation="max",
            engine_options={"long_text": "window"},
        )
    ]
    assert out.is_file()


def test_host_is_the_host_system_with_its_options(ran: list[BenchConfig], tmp_path: Path) -> None:
    args = ["--cores", "1", "--compression", "zstd,none", "--tokenizers", "0,1", "--rows", "9"]
    result = invoke("bench", "host", *args, "--out", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    assert ran == [
        BenchConfig(
            systems=["host"], cores=[1], compression=["zstd", "none"], tokenizers=[0, 1], rows=9
        )
    ]


def test_the_host_path_is_not_a_system_of_the_systems_command(ran: list[BenchConfig]) -> None:
    result = invoke("bench", "systems", "--systems", "engine-e2e,host")
    assert result.exit_code == 2 and ran == []
    assert result.stderr.strip().splitlines() == [
        "error: --systems host: the host path is its own command, `bertetl bench host`"
    ]


@pytest.mark.parametrize(
    ("command", "mode_flag"),
    [("memory", "--memory"), ("executors", "--executors"), ("long-text", "--long-documents")],
)
def test_each_benchmark_is_a_subcommand_not_a_flag(command: str, mode_flag: str) -> None:
    assert invoke("bench", mode_flag, "1").exit_code == 2  # the old spelling is gone
    result = invoke("bench", command, "--help")
    assert result.exit_code == 0 and "--out" in result.output


def test_memory_runs_its_row_counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import bertetl.bench.memory as memory

    calls = []
    monkeypatch.setattr(
        memory, "memory_check", lambda sizes, layer, model: calls.append((sizes, layer)) or {}
    )
    out = tmp_path / "m.json"
    result = invoke(
        "bench", "memory", "--rows", "20,300", "--memory-layer", "minilm", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert calls == [([20, 300], "minilm")] and out.read_text() == "{}"


def test_executors_runs_its_executors_on_its_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    import bertetl.bench.executors as executors

    calls = []

    def executor_bench(config, names, rows, partitions, files, repeats, workdir) -> dict:
        calls.append((config.embed_model, config.device, names, rows, partitions, files, repeats))
        return {}

    monkeypatch.setattr(executors, "executor_bench", executor_bench)
    args = ["--executors", "local", "--models", str(tiny_embed_dir), "--rows", "30"]
    args += ["--partitions", "2", "--files-per-partition", "3", "--repeats", "1", "--device", "cpu"]
    result = invoke("bench", "executors", *args, "--out", str(tmp_path / "e.json"))
    assert result.exit_code == 0, result.output
    assert calls == [(str(tiny_embed_dir), "cpu", ["local"], 30, 2, 3, 1)]


def test_mistakes_are_one_line_and_exit_non_zero_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown system, an input without its column and an --out in a missing folder are
    refused before any system runs (they exited 0 with empty results, or failed after it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertetl.bench.systems.inputs import check_inputs

    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"id": [1], "body": ["a text"]}), tmp_path / "mine.parquet")
    result = invoke("bench", "systems", "--systems", "nosuch")
    assert result.exit_code == 2 and "unknown system(s) nosuch" in result.output
    with pytest.raises(Exception, match=r"mine\.parquet has no column 'text'; its columns: id"):
        check_inputs(BenchConfig(inputs=[str(tmp_path / "mine.parquet")]))
    check_inputs(BenchConfig(inputs=[f"{tmp_path / 'mine.parquet'}:body"]))  # its column: fine
    result = invoke("bench", "memory", "--out", str(tmp_path / "missing" / "x.json"))
    assert result.exit_code == 1 and "does not exist; create it first" in result.output
    assert not (tmp_path / "bench.json").exists()
