"""`bertetl train` from a table on a real S3-compatible server (moto on loopback): the same
table read from the store trains the same model as read from a local folder, and store
errors are one line naming the URI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertetl.cli.app import app
from bertetl.config import TrainConfig
from bertetl.errors import InputError
from bertetl.io.stores.locations import parse_location
from bertetl.training.token_classification import TokenTrainConfig, train_tokens
from bertetl.training.train import train
from tests.io.s3_server import dead_endpoint
from tests.runs.test_object_store import upload_tree
from tests.training.test_token_classification import _sentences, _table
from tests.training.test_train import _reviews


def same_model(one: Path, other: Path) -> None:
    """Two MODEL_OUTs hold the same weights and the same held-out figures (all but the
    table's name, which differs by design)."""
    assert (one / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()
    first = json.loads((one / "eval" / "metrics.json").read_text())
    second = json.loads((other / "eval" / "metrics.json").read_text())
    first.pop("about"), second.pop("about")
    assert first == second


def test_sequence_classifier_from_s3_equals_local(
    tiny_base_dir: Path, write_table, tmp_path: Path, bucket: str, storage: dict[str, str]
) -> None:
    data = _reviews(60, seed=0)
    half = {k: v[:30] for k, v in data.items()}
    rest = {k: v[30:] for k, v in data.items()}
    write_table(half, "labelled/part-0.parquet", row_group_size=8)
    write_table(rest, "labelled/part-1.parquet")
    uri = f"s3://{bucket}/lake/labelled"
    upload_tree(tmp_path / "labelled", parse_location(uri, storage))
    config = TrainConfig(
        text_column="text",
        label_column="sentiment",
        base_model=str(tiny_base_dir),
        epochs=1,
        batch_size=8,
        device="cpu",
    )
    local = train(str(tmp_path / "labelled"), str(tmp_path / "local"), config)
    remote = train(uri, str(tmp_path / "remote"), config, storage)
    assert (remote.train_rows, remote.eval_rows) == (local.train_rows, local.eval_rows) == (48, 12)
    assert (remote.accuracy, remote.macro_f1, remote.labels) == (
        local.accuracy,
        local.macro_f1,
        local.labels,
    )
    same_model(tmp_path / "local", tmp_path / "remote")
    metrics = json.loads((tmp_path / "remote" / "eval" / "metrics.json").read_text())
    assert metrics["about"]["table"] == uri
    for pair in metrics["worst_confusions"]:  # rows named by file and row, as locally
        for example in pair["examples"]:
            part = half if example["file"] == "part-0.parquet" else rest
            assert part["text"][example["row"]] == example["text"]


def test_token_classifier_from_s3_equals_local(
    tiny_base_dir: Path, tmp_path: Path, bucket: str, storage: dict[str, str]
) -> None:
    import pyarrow.parquet as pq

    (tmp_path / "ner").mkdir()
    pq.write_table(_table(_sentences(24, seed=2)), tmp_path / "ner" / "train.parquet")
    pq.write_table(_table(_sentences(8, seed=3)), tmp_path / "held.parquet")
    upload_tree(tmp_path / "ner", parse_location(f"s3://{bucket}/ner", storage))
    upload_tree(tmp_path / "held.parquet", parse_location(f"s3://{bucket}/held.parquet", storage))
    config = TokenTrainConfig(
        text_column="text", base_model=str(tiny_base_dir), epochs=1, batch_size=8, device="cpu"
    )
    local = train_tokens(
        str(tmp_path / "ner"),
        str(tmp_path / "local"),
        config.model_copy(update={"eval_table": str(tmp_path / "held.parquet")}),
    )
    remote = train_tokens(
        f"s3://{bucket}/ner",
        str(tmp_path / "remote"),
        config.model_copy(update={"eval_table": f"s3://{bucket}/held.parquet"}),
        storage,
    )
    assert (remote.train_rows, remote.eval_rows) == (local.train_rows, local.eval_rows) == (24, 8)
    assert (remote.precision, remote.recall, remote.f1) == (local.precision, local.recall, local.f1)
    same_model(tmp_path / "local", tmp_path / "remote")
    # a local TABLE with an eval table on the store: the options are for that one
    mixed = train_tokens(
        str(tmp_path / "ner"),
        str(tmp_path / "mixed"),
        config.model_copy(update={"eval_table": f"s3://{bucket}/held.parquet"}),
        storage,
    )
    assert mixed.f1 == local.f1


def test_missing_objects_and_a_local_model_out(
    tiny_base_dir: Path, write_table, bucket: str, storage: dict[str, str], tmp_path: Path
) -> None:
    write_table(_reviews(10, seed=0))
    config = TrainConfig(text_column="text", label_column="y", base_model=str(tiny_base_dir))
    with pytest.raises(InputError, match=f"s3://{bucket}/nothing-here does not exist"):
        train(f"s3://{bucket}/nothing-here", str(tmp_path / "m"), config, storage)
    with pytest.raises(InputError, match=r"MODEL_OUT s3://.*local folder"):
        train(str(tmp_path / "src"), f"s3://{bucket}/model", config)
    with pytest.raises(InputError, match="--storage-option is for object-store URIs"):
        train(str(tmp_path / "src"), str(tmp_path / "m"), config, storage)
    assert not (tmp_path / "m").exists()


def one_line(result, uri: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and uri in lines[0], result.stderr
    return lines[0]


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_cli_missing_bucket_and_dead_endpoint_are_one_line(
    task: str, tiny_base_dir: Path, tmp_path: Path, storage: dict[str, str]
) -> None:
    runner = CliRunner()
    options = ["--text-column", "text", "--label-column", "y", "--task", task]
    options += ["--base-model", str(tiny_base_dir), "--device", "cpu"]
    missing = "s3://no-such-bucket-here/labelled"
    result = runner.invoke(
        app,
        [
            "train",
            missing,
            str(tmp_path / "m"),
            *options,
            "--storage-option",
            f"endpoint_url={storage['endpoint_url']}",
        ],
    )
    assert "does not exist" in one_line(result, missing)
    dead = dead_endpoint()  # a store that is down
    result = runner.invoke(
        app,
        [
            "train",
            "s3://some-bucket/labelled",
            str(tmp_path / "m"),
            *options,
            "--storage-option",
            f"endpoint_url={dead}",
            "--storage-option",
            "connect_timeout=1",
        ],
    )
    one_line(result, "s3://some-bucket/labelled")
    assert not (tmp_path / "m").exists()
