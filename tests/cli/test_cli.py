from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.io.commit import LOCK_NAME


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def bertetl(*args: str) -> Run:
    """The `bertetl` command, in this process (`typer.testing.CliRunner`). An exception that
    escapes the command shows in `stderr` as the traceback a real process would print."""
    from typer.testing import CliRunner

    from bertetl.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(result.exception)
        )
    return Run(result.exit_code, result.stdout, stderr)


def bertetl_process(*args: str) -> subprocess.CompletedProcess:
    """`python -m bertetl ...` as a real process: the entry point a user runs."""
    return subprocess.run(
        [sys.executable, "-m", "bertetl", *args], capture_output=True, text=True, timeout=300
    )


def enrich_cli(source: Path, dest: Path, *options: str) -> Run:
    """`bertetl enrich SOURCE DEST --text-column text OPTIONS...`"""
    return bertetl("enrich", str(source), str(dest), "--text-column", "text", *options)


@pytest.mark.slow  # a real `python -m bertetl` process
def test_enrich_end_to_end(tiny_embed_dir, tiny_classifier_dir, write_table, tmp_path) -> None:
    src = write_table({"id": [1, 2, 3], "text": ["good", None, "bad film"]})
    report = tmp_path / "report.json"
    run = bertetl_process(
        "enrich",
        str(src),
        str(tmp_path / "out"),
        "--text-column",
        "text",
        "--embed-model",
        str(tiny_embed_dir),
        "--classify-model",
        str(tiny_classifier_dir),
        "--device",
        "cpu",
        "--batch-tokens",
        "64",
        "--max-length",
        "16",
        "--prefix",
        "p_",
        "--scores",
        "--report",
        str(report),
    )
    assert run.returncode == 0, run.stderr
    assert "enriched 3 rows from 1 file(s)" in run.stdout
    out = pq.read_table(tmp_path / "out" / src.name)
    assert out.schema.names == [
        "id",
        "text",
        "p_embedding",
        "p_label",
        "p_score",
        "p_scores",
        "p_enrich_error",
    ]
    assert out.column("p_enrich_error").to_pylist() == [None, "text is null", None]
    assert json.loads(report.read_text())["rows"] == 3


@pytest.mark.parametrize(
    "table,expected",
    [
        ({"body": ["x"]}, "text column 'text' not found; columns are: body"),
        ({"text": [1]}, "text column 'text' has type int64"),
    ],
)
def test_bad_column_is_one_line_non_zero(
    tiny_embed_dir, write_table, tmp_path, table, expected
) -> None:
    src = write_table(table)
    run = enrich_cli(
        src,
        tmp_path / "out",
        "--embed-model",
        str(tiny_embed_dir),
    )
    assert run.returncode != 0
    assert expected in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr


def test_missing_model_dir_is_named(write_table, tmp_path) -> None:
    src = write_table({"text": ["x"]})
    run = enrich_cli(
        src,
        tmp_path / "out",
        "--embed-model",
        str(tmp_path / "no-model"),
    )
    assert run.returncode != 0
    assert f"model directory {tmp_path / 'no-model'} does not exist" in run.stderr


def test_needs_a_model(write_table, tmp_path) -> None:
    src = write_table({"text": ["x"]})
    run = enrich_cli(src, tmp_path / "out")
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "error: give at least one of --embed-model / --classify-model / --classify / "
        "--zero-shot / --ner (embed_model / classify_model / classify / zero_shot / ner)"
    )


def test_bad_option_value_names_the_flag(tiny_embed_dir, write_table, tmp_path) -> None:
    src = write_table({"text": ["x"]})
    run = enrich_cli(
        src,
        tmp_path / "out",
        "--embed-model",
        str(tiny_embed_dir),
        "--batch-tokens",
        "0",
    )
    assert run.returncode == 2
    assert run.stderr.strip() == "error: --batch-tokens: Input should be greater than 0"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--workers", "0", "Input should be greater than 0"),
        ("--tokenizers", "-1", "Input should be greater than or equal to 0"),
    ],
)
def test_bad_executor_option_names_its_flag(
    tiny_embed_dir, write_table, tmp_path, option: str, value: str, message: str
) -> None:
    """An executor's option (nested under `executor` in the config) is named by its flag."""
    src = write_table({"text": ["x"]})
    run = enrich_cli(src, tmp_path / "out", "--embed-model", str(tiny_embed_dir), option, value)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {option}: {message}"


def test_failed_file_exits_non_zero_and_names_it(tiny_embed_dir, write_table, tmp_path) -> None:
    write_table({"text": ["x"]}, "src/good.parquet")
    (tmp_path / "src" / "bad.parquet").write_bytes(b"PAR1 truncated")
    run = enrich_cli(
        tmp_path / "src",
        tmp_path / "out",
        "--embed-model",
        str(tiny_embed_dir),
    )
    assert run.returncode == 1
    assert "bad.parquet" in run.stderr
    outputs = [p.name for p in (tmp_path / "out").iterdir() if p.name != LOCK_NAME]
    assert outputs == ["good.parquet"]


@pytest.mark.parametrize(
    "command,options",
    [
        (
            "enrich",
            [
                "--text-column",
                "--embed-model",
                "--classify-model",
                "--device",
                "--batch-tokens",
                "--max-length",
                "--long-text",
                "--window-overlap",
                "--max-windows",
                "--token-stats",
                "--emit",
                "--prefix",
            ],
        ),
        ("train", ["--text-column", "--label-column", "--base-model", "--epochs"]),
    ],
)
def test_help_explains_every_option(command: str, options: list[str]) -> None:
    from typer.testing import CliRunner

    from bertetl.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in options:
        line = next(line for line in result.output.splitlines() if option in line)
        assert len(line.split(option, 1)[1].strip(" │")) > 10, f"{option} has no help text"


def test_dictionary_text_column_via_cli(tiny_embed_dir, write_table, tmp_path) -> None:
    src = write_table(pa.table({"text": pa.array(["a", "b", "a"]).dictionary_encode()}))
    run = enrich_cli(
        src,
        tmp_path / "out",
        "--embed-model",
        str(tiny_embed_dir),
    )
    assert run.returncode == 0, run.stderr
    out = pq.read_table(tmp_path / "out" / src.name)
    assert pa.types.is_dictionary(out.schema.field("text").type)
    emb = np.array(out.column("embedding").to_pylist())
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-5)
    assert not np.allclose(emb[0], emb[1], atol=1e-3)


def test_several_failed_files_give_one_line(tiny_embed_dir, write_table, tmp_path) -> None:
    write_table({"text": ["x"]}, "src/good.parquet")
    (tmp_path / "src" / "bad1.parquet").write_bytes(b"PAR1 truncated")
    (tmp_path / "src" / "bad2.parquet").write_bytes(b"nonsense")
    run = enrich_cli(
        tmp_path / "src",
        tmp_path / "out",
        "--embed-model",
        str(tiny_embed_dir),
        "--report",
        str(tmp_path / "new" / "r.json"),
    )
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "bad1.parquet" in run.stderr and "1 more failed file" in run.stderr
    report = json.loads((tmp_path / "new" / "r.json").read_text())
    assert set(report["failures"]) == {
        str(tmp_path / "src" / "bad1.parquet"),
        str(tmp_path / "src" / "bad2.parquet"),
    }


def test_long_text_window_and_token_stats_via_cli(tiny_embed_dir, write_table, tmp_path) -> None:
    long = " ".join(["the film was long"] * 60)
    src = write_table({"text": ["short one", long, None]})
    options = ("--embed-model", str(tiny_embed_dir), "--device", "cpu", "--token-stats")
    run = enrich_cli(src, tmp_path / "w", *options, "--long-text", "window", "--max-windows", "3")
    assert run.returncode == 0, run.stderr
    assert "1 truncated" in run.stdout
    out = pq.read_table(tmp_path / "w" / src.name)
    assert out.schema.names[-4:] == ["tokens", "windows", "truncated", "enrich_error"]
    assert out.column("windows").to_pylist() == [1, 3, None]
    bad = enrich_cli(
        src, tmp_path / "bad", *options, "--long-text", "window", "--window-overlap", "46"
    )
    assert bad.returncode != 0
    assert "--window-overlap 46" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_summary_prints_the_drift_and_the_partitions_to_look_at(
    tiny_embed_dir, tiny_classifier_dir, tmp_path
) -> None:
    """`bertetl summary` prints the drift table of a partitioned DEST (from its manifests)
    and names the partition whose texts moved; drift never changes the exit status."""
    from bertetl.config import EngineConfig
    from bertetl.executors.local import LocalExecutor
    from bertetl.runs.plan import plan_partitions
    from bertetl.runs.staged import enrich_partition
    from tests.conftest import TEXTS

    src, dest = tmp_path / "src", tmp_path / "dest"
    for day in range(1, 5):  # the same texts each day, but on the 3rd
        texts = ["ж ψ " * 20] * len(TEXTS) if day == 3 else TEXTS
        (src / f"date=2026-01-0{day}").mkdir(parents=True)
        pq.write_table(
            pa.table({"text": pa.array(texts, pa.string())}),
            src / f"date=2026-01-0{day}" / "part-0.parquet",
        )
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        prefix="m_",
    )
    executor = LocalExecutor(config)
    executor.setup()
    plan = plan_partitions(src, dest, "date", config)
    for item in plan.by_action("enrich"):
        enrich_partition(executor, item, dest, plan)
    executor.teardown()

    run = bertetl(
        "summary", str(dest), "--partition-column", "date", "--prefix", "m_",
        "--drift-js-threshold", "1", "--drift-cosine-threshold", "0.015",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    drift = run.stdout.split("drift (", 1)[1]
    assert "against the 7 committed partition(s) before it" in drift
    assert all(name in drift for name in ("js_divergence", "cosine_distance", "mean_score"))
    assert "2026-01-04" in drift
    look = drift.split("look at: ", 1)[1].splitlines()
    assert look[0] == "1 partition(s) over a drift threshold:"
    assert look[1].startswith("  date=2026-01-03: embedding: cosine distance")

    # the partition column from the manifests; with a window of 1, the 4th day's baseline is
    # the 3rd alone, so it is named too
    run = bertetl(
        "summary", str(dest), "--prefix", "m_", "--drift-window", "1",
        "--drift-js-threshold", "1", "--drift-cosine-threshold", "0.015",
    )  # fmt: skip
    assert run.returncode == 0 and "look at: 2 partition(s)" in run.stdout
    assert "  date=2026-01-04: " in run.stdout
    run = bertetl("summary", str(dest), "--drift-window", "0")
    assert run.returncode == 2 and run.stderr.startswith("error: --drift-window:")
    run = bertetl(
        "summary", str(dest), "--prefix", "m_",
        "--drift-js-threshold", "1", "--drift-cosine-threshold", "2",
    )  # fmt: skip
    assert run.returncode == 0 and "look at: none" in run.stdout


@pytest.mark.parametrize(
    ("sizes", "why"),
    [
        ("100,abc", "invalid literal for int() with base 10: 'abc'"),
        ("0", "got '0'"),
        (",", "got ','"),
    ],
)
def test_bench_memory_row_counts_are_checked_before_any_run(sizes: str, why: str) -> None:
    run = bertetl("bench", "memory", "--rows", sizes)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: --rows: row counts are positive integers, e.g. 20000,100000 ({why})"
    ]


def test_bench_cores_beyond_this_machine_is_one_line() -> None:
    run = bertetl("bench", "host", "--cores", "1,4096")
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: --cores: 4096 cores asked, but this process may use only "
        f"{len(os.sched_getaffinity(0))}"
    ]


def test_a_report_path_in_source_or_dest_or_a_folder_is_refused_before_the_run(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    src = write_table({"text": ["one"]}, "src/a.parquet")
    before = src.read_bytes()
    (tmp_path / "reports").mkdir()
    cases = {
        str(src): "lies in SOURCE",  # would overwrite the input
        str(tmp_path / "src" / "r.json"): "lies in SOURCE",  # a stray file for the next run
        str(tmp_path / "out" / "a.parquet"): "lies in DEST",  # would replace an output
        str(tmp_path / "reports"): "is a folder",
    }
    for report, expected in cases.items():
        run = enrich_cli(
            tmp_path / "src", tmp_path / "out", "--embed-model", str(tiny_embed_dir),
            "--report", report,
        )  # fmt: skip
        assert run.returncode == 1, run.stderr
        assert expected in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert not (tmp_path / "out").exists()  # refused before the run
    glob_run = bertetl(
        "enrich", str(tmp_path / "src" / "*.parquet"), str(tmp_path / "out"), "--text-column",
        "text", "--embed-model", str(tiny_embed_dir), "--report", str(src),
    )  # fmt: skip
    assert glob_run.returncode == 1 and "lies in SOURCE" in glob_run.stderr
    assert src.read_bytes() == before
    run = enrich_cli(
        tmp_path / "src", tmp_path / "out", "--embed-model", str(tiny_embed_dir),
        "--report", str(tmp_path / "reports" / "run.json"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "reports" / "run.json").read_text())["rows"] == 1
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["run.json"]  # no temp left


def test_side_outputs_never_overwrite_what_is_not_an_earlier_result(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """`--report` and `bench --out` are checked before any work: a Parquet file (another
    DEST's output, or the bench's own input) is refused by name and left as it was; an earlier
    JSON result is replaced."""
    source = write_table({"text": ["a good film", "a bad one"]})
    theirs = tmp_path / "theirs.parquet"
    theirs.write_bytes(source.read_bytes())
    before = theirs.read_bytes()
    model = ("--embed-model", str(tiny_embed_dir))
    run = enrich_cli(source, tmp_path / "out", *model, "--report", str(theirs))
    assert run.returncode == 1 and "is not a JSON result of an earlier run" in run.stderr
    assert theirs.read_bytes() == before and not (tmp_path / "out").exists()
    run = bertetl("bench", "systems", "--inputs", f"{source}:text", "--out", str(source))
    assert run.returncode == 1 and "lies in or is the input" in run.stderr
    assert source.read_bytes() == before
    for foreign in ('{"compilerOptions": {"strict": true}}', '{"rows": 1}'):  # not a report
        (tmp_path / "theirs.json").write_text(foreign)
        run = enrich_cli(
            source, tmp_path / "out", *model, "--report", str(tmp_path / "theirs.json")
        )
        assert run.returncode == 1 and "not a JSON result" in run.stderr
        assert (tmp_path / "theirs.json").read_text() == foreign
    log = tmp_path / "t" / "_delta_log" / "00000000000000000002.json"  # a table's next commit
    run = enrich_cli(source, f"delta://{tmp_path / 't'}", *model, "--report", str(log))
    assert run.returncode == 1 and "lies in DEST" in run.stderr and not log.exists()
    earlier = tmp_path / "report.json"
    run = enrich_cli(source, tmp_path / "out", *model, "--report", str(earlier))
    assert run.returncode == 0, run.stderr
    earlier.write_text(earlier.read_text().replace('"rows": 2', '"rows": 7'))
    run = enrich_cli(source, tmp_path / "out", *model, "--report", str(earlier))
    assert run.returncode == 0, run.stderr  # an earlier report is replaced
    assert json.loads(earlier.read_text())["rows"] == 2


def test_emit_windows_via_cli(tiny_embed_dir, write_table, tmp_path) -> None:
    long = " ".join(["the film was long"] * 60)
    src = write_table({"id": [1, 2, 3], "text": ["short one", long, None]})
    options = ("--embed-model", str(tiny_embed_dir), "--device", "cpu", "--long-text", "window")
    run = enrich_cli(src, tmp_path / "w", *options, "--token-stats", "--emit", "windows")
    assert run.returncode == 0, run.stderr
    out = pq.read_table(tmp_path / "w" / src.name)
    windows = out.column("windows")[1].as_py()
    assert windows > 3
    assert out.column("id").to_pylist() == [1, *[2] * windows, 3]
    assert out.column("window").to_pylist() == [0, *range(windows), None]
    assert (out.column("char_start")[0].as_py(), out.column("char_end")[0].as_py()) == (0, 9)
    assert out.column("char_end")[windows].as_py() == len(long)
    refused = enrich_cli(src, tmp_path / "r", *options[:-2], "--emit", "windows")
    assert refused.returncode != 0
    assert "--emit windows needs --long-text window" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
