"""`bertetl evaluate` of a table on a real S3-compatible server (moto on loopback): the same
table read from the store gives the same report as read from a local folder, with the model
run through the engine or from the table's own predictions; store errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertetl.config import EngineConfig
from bertetl.errors import InputError
from bertetl.evaluate.config import EvaluateConfig
from bertetl.evaluate.run import evaluate
from bertetl.io.stores.locations import parse_location
from tests.cli.test_cli import bertetl
from tests.cli.test_evaluate import one_line_error
from tests.evaluate.tables import single_label_table
from tests.evaluate.test_run import SENTIMENT, _labelled
from tests.runs.test_object_store import upload_tree


def without_about(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "about"}


@pytest.fixture
def no_plots(monkeypatch) -> None:
    """Skip drawing the PNGs (most of an evaluation's time here; they are drawn from the
    metrics compared, and tests/evaluate/test_page.py covers them)."""
    monkeypatch.setattr("bertetl.evaluate.run.draw_plots", lambda *args: {})


@pytest.fixture
def enriched(write_table, tmp_path: Path, bucket: str, storage: dict[str, str]) -> str:
    """An enriched table (predictions and scores) in two hive files, locally under
    tmp_path/enriched and on the store; its URI."""
    truth = [SENTIMENT[(i * 7) % 3] for i in range(40)]
    truth[3] = None
    table = single_label_table(truth, SENTIMENT, seed=4, missing={5})
    write_table(table.slice(0, 25), "enriched/day=1/part-0.parquet", row_group_size=10)
    write_table(table.slice(25), "enriched/day=2/part-0.parquet")
    uri = f"s3://{bucket}/enriched"
    upload_tree(tmp_path / "enriched", parse_location(uri, storage))
    return uri


def test_predictions_from_s3_equal_local(
    enriched: str, tmp_path: Path, storage: dict[str, str], no_plots
) -> None:
    config = EvaluateConfig(label_column="y", text_column="text")
    local = evaluate(tmp_path / "enriched", tmp_path / "local", config)
    remote = evaluate(enriched, tmp_path / "remote", config, storage)
    assert remote.metrics["about"]["table"] == enriched
    assert without_about(remote.metrics) == without_about(local.metrics)
    assert remote.metrics["rows"]["total"] == 40
    examples = [e for pair in remote.metrics["worst_confusions"] for e in pair["examples"]]
    assert examples and all(e["text"].startswith("review number") for e in examples)
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == sorted(remote.files)


def test_classify_model_over_s3_equals_local(
    tiny_classifier_dir: Path,
    write_table,
    tmp_path: Path,
    bucket: str,
    storage: dict[str, str],
    no_plots,
) -> None:
    write_table(_labelled(multi_label=False), "src/part-0.parquet", row_group_size=8)
    uri = f"s3://{bucket}/labelled"
    upload_tree(tmp_path / "src", parse_location(uri, storage))
    engine = EngineConfig(
        text_column="text", classify_model=str(tiny_classifier_dir), device="cpu", batch_tokens=128
    )
    config = EvaluateConfig(label_column="y", engine=engine)
    local = evaluate(tmp_path / "src", tmp_path / "local", config)
    remote = evaluate(uri, tmp_path / "remote", config, storage)
    assert without_about(remote.metrics) == without_about(local.metrics)
    assert remote.metrics["rows"]["total"] == 30
    assert not list(tmp_path.glob(".remote*"))  # the staged predictions are gone


def test_out_stays_local_and_options_need_a_uri(
    enriched: str, tmp_path: Path, storage: dict[str, str]
) -> None:
    config = EvaluateConfig(label_column="y")
    with pytest.raises(InputError, match=r"--out s3://b/report: .*local folder"):
        evaluate(enriched, "s3://b/report", config, storage)
    with pytest.raises(InputError, match="--storage-option is for object-store URIs"):
        evaluate(tmp_path / "enriched", tmp_path / "out", config, storage)
    with pytest.raises(InputError, match=f"{enriched}/nothing does not exist"):
        evaluate(f"{enriched}/nothing", tmp_path / "out", config, storage)
    assert not (tmp_path / "out").exists()


def test_cli_reads_s3_and_a_missing_bucket_is_one_line(
    enriched: str, tmp_path: Path, storage: dict[str, str], no_plots
) -> None:
    endpoint = f"endpoint_url={storage['endpoint_url']}"
    common = ["--label-column", "y", "--text-column", "text", "--predictions"]
    run = bertetl(
        "evaluate", enriched, *common, "--out", str(tmp_path / "out"), "--storage-option", endpoint
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("evaluated 38 of 40 rows")
    local = evaluate(
        tmp_path / "enriched",
        tmp_path / "local",
        EvaluateConfig(label_column="y", text_column="text"),
    )
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert without_about(written) == without_about(local.metrics)

    missing = "s3://no-such-bucket-here/enriched"
    run = bertetl(
        "evaluate", missing, *common, "--out", str(tmp_path / "x"), "--storage-option", endpoint
    )
    line = one_line_error(run)
    assert missing in line and "does not exist" in line
    run = bertetl("evaluate", enriched, *common, "--out", "s3://b/x", "--storage-option", endpoint)
    assert "s3://b/x" in one_line_error(run)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_a_delta_or_iceberg_table_evaluates_as_its_parquet_does(
    fmt: str, write_table, tmp_path: Path, no_plots, request
) -> None:
    """A table TABLE (`delta://`, `iceberg://`) is read at one version into a local copy:
    the report equals the one of the Parquet it was written from (but for the file names
    of the examples: the copy's)."""
    from bertetl.io.stores.locations import resolve
    from bertetl.io.tables import replace_table

    truth = [SENTIMENT[(i * 5) % 3] for i in range(30)]
    write_table(single_label_table(truth, SENTIMENT, seed=2, missing={4}), "enriched/p.parquet")
    if fmt == "delta":
        uri = f"delta://{tmp_path / 'delta'}"
    else:
        uri = f"iceberg://{request.getfixturevalue('iceberg_catalog')}/evals.enriched"
    # written as bertetl enrich writes a table (the label order of `scores` kept)
    replace_table(
        resolve(uri), tmp_path / "enriched", [tmp_path / "enriched" / "p.parquet"], 30, "{}"
    )
    config = EvaluateConfig(label_column="y", text_column="text")
    local = evaluate(tmp_path / "enriched", tmp_path / "local", config)
    from_table = evaluate(uri, tmp_path / "from-table", config)
    assert from_table.metrics["about"]["table"] == uri
    assert without_files(from_table.metrics) == without_files(local.metrics)
    assert from_table.metrics["roc_auc"]["macro"] is not None  # the scores' labels came along
    assert from_table.metrics["rows"]["total"] == 30


def without_files(metrics: dict) -> dict:
    """The metrics but `about` and the examples' file names."""
    out = without_about(metrics)
    out["worst_confusions"] = [
        {
            **pair,
            "examples": [{k: v for k, v in e.items() if k != "file"} for e in pair["examples"]],
        }
        for pair in out["worst_confusions"]
    ]
    return out
