"""`bertetl evaluate` in-process: the two modes, and bad input as one line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from tests.cli.test_cli import Run, bertetl
from tests.evaluate.tables import single_label_table


def evaluate_cli(table: Path, out: Path, *options: str) -> Run:
    return bertetl(
        "evaluate", str(table), "--label-column", "y", "--text-column", "text",
        "--out", str(out), *options,
    )  # fmt: skip


def one_line_error(run: Run, code: int = 1) -> str:
    assert run.returncode == code, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0]


def test_classify_model_writes_the_report(tiny_classifier_dir, write_table, tmp_path) -> None:
    write_table(
        {"text": ["good film", "bad film", "fine", "x"], "y": ["positive"] * 2 + ["neutral"] * 2}
    )
    run = evaluate_cli(
        tmp_path / "src", tmp_path / "out", "--classify-model", str(tiny_classifier_dir),
        "--device", "cpu", "--batch-tokens", "64",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(
        "evaluated 4 of 4 rows (0 without a label, 0 without a prediction)"
    )
    assert f"report: {tmp_path / 'out' / 'report.html'}" in run.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert f"accuracy {metrics['accuracy']:.3f}" in run.stdout


def test_label_column_missing(tiny_classifier_dir, write_table, tmp_path) -> None:
    write_table({"text": ["good", "bad"], "sentiment": ["positive", "negative"]})
    run = evaluate_cli(
        tmp_path / "src", tmp_path / "out", "--classify-model", str(tiny_classifier_dir)
    )
    line = one_line_error(run)
    assert "label column 'y' not found; columns are: text, sentiment" in line


def test_labels_the_model_lacks(tiny_classifier_dir, write_table, tmp_path) -> None:
    write_table({"text": ["good", "bad", "so so"], "y": ["positive", "awful", "meh"]})
    run = evaluate_cli(
        tmp_path / "src", tmp_path / "out", "--classify-model", str(tiny_classifier_dir)
    )
    line = one_line_error(run)
    assert "2 label(s) the model does not know: 'awful', 'meh'" in line
    assert "the model's labels: negative, neutral, positive" in line


def test_empty_table(tiny_classifier_dir, write_table, tmp_path) -> None:
    write_table(pa.table({"text": pa.array([], pa.string()), "y": pa.array([], pa.string())}))
    run = evaluate_cli(
        tmp_path / "src", tmp_path / "out", "--classify-model", str(tiny_classifier_dir)
    )
    assert "nothing to evaluate" in one_line_error(run)
    write_table(single_label_table([], ["neg", "pos"]), "enriched/part-0.parquet")
    run = evaluate_cli(tmp_path / "enriched", tmp_path / "out", "--predictions")
    assert "nothing to evaluate: of 0 row(s)" in one_line_error(run)


def test_no_overlap_is_a_result_with_a_warning(write_table, tmp_path) -> None:
    table = single_label_table(["a"] * 12, ["a", "b", "c"], lean=-50.0)
    write_table(table)
    run = evaluate_cli(tmp_path / "src", tmp_path / "out", "--predictions")
    assert run.returncode == 0, run.stderr
    assert "accuracy 0.000" in run.stdout
    assert "warning: the true and the predicted labels have no label in common" in run.stderr
    assert "Traceback" not in run.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((), "give exactly one of --classify-model M / --predictions"),
        (("--predictions", "--classify-model", "m"), "give exactly one of"),
        (("--predictions", "--device", "cpu", "--threshold", "0.3"), "--device, --threshold:"),
        (("--predictions", "--calibration-bins", "1"), "--calibration-bins:"),
    ],
    ids=["no-mode", "both-modes", "engine-options-without-a-model", "bad-bins"],
)
def test_bad_options_exit_2(options, message, write_table, tmp_path) -> None:
    write_table(single_label_table(["neg", "pos"], ["neg", "pos"]))
    run = evaluate_cli(tmp_path / "src", tmp_path / "out", *options)
    assert message in one_line_error(run, code=2)


def test_a_model_that_is_no_model(write_table, tmp_path) -> None:
    write_table({"text": ["good"], "y": ["positive"]})
    run = evaluate_cli(tmp_path / "src", tmp_path / "out", "--classify-model", str(tmp_path))
    assert "config.json is missing" in one_line_error(run)


def test_usage_errors_stay_one_line_with_debug(write_table, tmp_path) -> None:
    write_table(single_label_table(["neg", "pos"], ["neg", "pos"]))
    run = evaluate_cli(tmp_path / "src", tmp_path / "out", "--debug")
    assert "give exactly one of" in one_line_error(run, code=2)
