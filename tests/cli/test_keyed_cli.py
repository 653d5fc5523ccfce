"""`--key`, `--dry-run` and `--report` from the command line: the nightly `incremental`
through its Prefect flow, `enrich --key` in process; the final line and the report agree
with what DEST then holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertetl.cli.app import app
from tests.runs.keyed_places import change_source, read_dest, write_source


def _args(tiny_embed_dir: Path) -> list[str]:
    return ["--key", "id", "--text-column", "text", "--embed-model", str(tiny_embed_dir)]


@pytest.mark.usefixtures("prefect_harness")
def test_incremental_by_key_needs_no_partition_column(tmp_path: Path, tiny_embed_dir: Path):
    src, dest = write_source(tmp_path / "src"), tmp_path / "dest"
    runner = CliRunner()
    first = runner.invoke(app, ["incremental", str(src), str(dest), *_args(tiny_embed_dir)])
    assert first.exit_code == 0, first.output
    assert "60 rows in; 60 inferred" in first.output
    change_source(src)
    dry = runner.invoke(
        app, ["incremental", str(src), str(dest), *_args(tiny_embed_dir), "--dry-run",
              "--report", str(tmp_path / "dry.json")],
    )  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert "would write" in dry.output and "rows/s" in dry.output
    result = runner.invoke(
        app, ["incremental", str(src), str(dest), *_args(tiny_embed_dir),
              "--report", str(tmp_path / "run.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run.json").read_text())
    planned = json.loads((tmp_path / "dry.json").read_text())
    assert report["rows_inferred"] == planned["rows_inferred"] == 4
    assert report["rows_deleted"] == planned["rows_deleted"] == 2
    rows = read_dest(str(dest))
    assert report["rows_in"] == rows.height == 61
    assert f"{report['rows_in']} rows in; {report['rows_inferred']} inferred" in result.output


def test_enrich_with_a_key_is_incremental_and_options_need_it(tmp_path: Path, tiny_embed_dir: Path):
    src, dest = write_source(tmp_path / "src"), tmp_path / "dest"
    runner = CliRunner()
    runner.invoke(app, ["enrich", str(src), str(dest), *_args(tiny_embed_dir)])
    again = runner.invoke(app, ["enrich", str(src), str(dest), *_args(tiny_embed_dir)])
    assert again.exit_code == 0, again.output
    assert "0 inferred, 60 reused" in again.output and "no commit" in again.output
    refused = runner.invoke(
        app, ["enrich", str(src), str(tmp_path / "other"), "--text-column", "text",
              "--embed-model", str(tiny_embed_dir), "--output-columns", "key"],
    )  # fmt: skip
    assert refused.exit_code != 0
    assert "--output-columns key need --key" in refused.output
    missing = runner.invoke(app, ["incremental", str(src), str(dest), "--text-column", "text",
                                  "--embed-model", str(tiny_embed_dir)])  # fmt: skip
    assert missing.exit_code == 2
    assert "partition_column" in missing.output or "--partition-column" in missing.output


@pytest.mark.usefixtures("prefect_harness")
def test_backfill_dry_run_counts_what_the_run_then_does(
    tmp_path: Path, tiny_embed_dir: Path, partitioned_source
):
    src, dest = partitioned_source(days=3, rows=10), tmp_path / "dest"
    common = ["--partition-column", "date", "--text-column", "text", "--embed-model",
              str(tiny_embed_dir)]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(app, ["backfill", str(src), str(dest), *common, "--end", "2026-01-02"])
    assert first.exit_code == 0, first.output
    dry = runner.invoke(
        app, ["backfill", str(src), str(dest), *common, "--dry-run", "--report",
              str(tmp_path / "dry.json")],
    )  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert "2026-01-03: enrich (10 rows)" in dry.output
    assert not (dest / "date=2026-01-03").exists()  # nothing written
    run = runner.invoke(
        app, ["backfill", str(src), str(dest), *common, "--report", str(tmp_path / "run.json")]
    )
    assert run.exit_code == 0, run.output
    planned = json.loads((tmp_path / "dry.json").read_text())
    done = json.loads((tmp_path / "run.json").read_text())
    assert planned["rows_inferred"] == done["rows_written"] == 10
    assert done["rows_in"] == planned["rows_in"] == 30
