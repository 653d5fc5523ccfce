"""Rule 6: every failure is one line that names the cause, found before anything heavy loads.

Each case is broken the way a user breaks it, then run through the real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli.test_cli import bertetl


def _one_line_error(run, *needles: str) -> str:
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), run.stderr
    for needle in needles:
        assert needle in last, last
    return last


@pytest.mark.parametrize("names", [["text", "text"], ["id", "text", "id"]])
def test_duplicate_column_names_are_named_before_any_model_loads(
    tmp_path: Path, names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bertetl.engine.encoders as encoders

    src = tmp_path / "src"
    src.mkdir()
    columns = [pa.array(["a b", "c"]) if n == "text" else pa.array([1, 2]) for n in names]
    pq.write_table(pa.Table.from_arrays(columns, names=names), src / "part-0.parquet")
    monkeypatch.setattr(encoders, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    run = bertetl("enrich", str(src), str(tmp_path / "out"), "--text-column", "text",
                  "--embed-model", "minilm")  # fmt: skip
    duplicated = sorted({n for n in names if names.count(n) > 1})
    _one_line_error(run, "part-0.parquet", *(repr(n) for n in duplicated), "more than once")
    assert not (tmp_path / "out" / "part-0.parquet").exists()


def _model_copy(model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    return copy


def test_truncated_safetensors_is_named(
    tiny_embed_dir: Path, write_table, text_table: pa.Table, tmp_path: Path
) -> None:
    model = _model_copy(tiny_embed_dir, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    src = write_table(text_table).parent
    run = bertetl("enrich", str(src), str(tmp_path / "out"), "--text-column", "text",
                  "--embed-model", str(model))  # fmt: skip
    _one_line_error(run, str(weights), "truncated or corrupt")


def test_garbage_safetensors_header_is_named(
    tiny_embed_dir: Path, write_table, text_table: pa.Table, tmp_path: Path
) -> None:
    model = _model_copy(tiny_embed_dir, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])
    src = write_table(text_table).parent
    run = bertetl("enrich", str(src), str(tmp_path / "out"), "--text-column", "text",
                  "--embed-model", str(model))  # fmt: skip
    _one_line_error(run, str(weights), "not a readable safetensors file")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "modules.json"])
def test_model_json_that_is_not_json_is_named(
    tiny_embed_dir: Path, write_table, text_table: pa.Table, tmp_path: Path, name: str
) -> None:
    model = _model_copy(tiny_embed_dir, tmp_path)
    (model / name).write_text("{ not json")
    src = write_table(text_table).parent
    run = bertetl("enrich", str(src), str(tmp_path / "out"), "--text-column", "text",
                  "--embed-model", str(model))  # fmt: skip
    _one_line_error(run, str(model / name), "not valid JSON")


@pytest.mark.usefixtures("prefect_harness")
def test_duplicate_columns_in_a_partition_fail_that_partition_in_one_line(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=2, rows=12), tmp_path / "dest"
    bad = src / "date=2026-01-02" / "part-0.parquet"
    table = pq.read_table(bad)
    pq.write_table(table.append_column("id", table.column("id")), bad)
    run = bertetl("backfill", str(src), str(dest), "--partition-column", "date",
                  "--text-column", "text", "--embed-model", str(tiny_embed_dir),
                  "--retries", "0")  # fmt: skip
    _one_line_error(run, "date=2026-01-02", str(bad), "'id'", "more than once")
    assert (dest / "date=2026-01-01" / "_manifest.json").exists()  # the good one committed


@pytest.mark.slow  # starts a Prefect server process
def test_server_that_does_not_start_in_time_is_one_line_with_the_fix(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    src = partitioned_source(days=1, rows=12)
    monkeypatch.setenv("BERTETL_SERVER_START_TIMEOUT", "1")  # no server boots in 1 s of waiting
    # no API URL (even where this worker's flow tests set one): the CLI starts its own server
    with temporary_settings(
        {PREFECT_HOME: str(tmp_path / "prefect")}, restore_defaults={PREFECT_API_URL}
    ):
        run = bertetl("backfill", str(src), str(tmp_path / "dest"), "--partition-column",
                      "date", "--text-column", "text",
                      "--embed-model", str(tiny_embed_dir))  # fmt: skip
    _one_line_error(run, "did not start within 1s", "BERTETL_SERVER_START_TIMEOUT")
    assert not (tmp_path / "dest" / "date=2026-01-01").exists()
