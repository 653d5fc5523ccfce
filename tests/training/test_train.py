from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig, TrainConfig
from bertetl.errors import InputError
from bertetl.runs.enrich import enrich
from bertetl.training.train import macro_f1, stratified_split, train

POSITIVE = ["good", "fun", "lovely", "movie", "that", "was", "and"]
NEGATIVE = ["bad", "terrible", "boring", "awful", "film", "with", "acting"]


def _reviews(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = POSITIVE if i % 2 else NEGATIVE
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))))
        labels.append("pos" if i % 2 else "neg")
    return {"text": texts, "sentiment": labels}


def test_macro_f1_by_hand() -> None:
    truth = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    # label 0: tp1 fp1 fn1 -> .5 ; label 1: tp2 fp1 fn0 -> .8 ; label 2: tp0 fp0 fn1 -> 0
    assert macro_f1(truth, predicted, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_split_is_stratified_and_disjoint() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    train_rows, eval_rows = stratified_split(labels, 0.25, None, seed=3)
    assert not set(train_rows) & set(eval_rows)
    assert len(train_rows) + len(eval_rows) == 100
    assert (labels[eval_rows] == 0).sum() == 20 and (labels[eval_rows] == 1).sum() == 5


def test_train_learns_and_enrich_loads_the_result(
    tiny_base_dir: Path, write_table, tmp_path
) -> None:
    table = write_table(_reviews(240, seed=0), "labelled/part-0.parquet")
    config = TrainConfig(
        text_column="text",
        label_column="sentiment",
        base_model=str(tiny_base_dir),
        epochs=6,
        learning_rate=1e-3,
        batch_size=16,
        device="cpu",
    )
    report = train(str(table), str(tmp_path / "model"), config)
    assert report.labels == ["neg", "pos"]
    assert report.eval_rows == 48 and report.train_rows == 192
    assert report.accuracy >= 0.9 and report.macro_f1 >= 0.9
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "neg", "1": "pos"}
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "model" / "training_metrics.json").read_text())["accuracy"] == (
        report.accuracy
    )
    fresh = write_table(_reviews(40, seed=1), "unseen/part-0.parquet")
    enrich(
        fresh,
        tmp_path / "out",
        EngineConfig(text_column="text", classify_model=str(tmp_path / "model")),
    )
    out = pq.read_table(tmp_path / "out" / "part-0.parquet")
    accuracy = np.mean(
        np.array(out.column("label").to_pylist()) == np.array(out.column("sentiment").to_pylist())
    )
    assert accuracy >= 0.9


def test_single_label_table_is_refused(tiny_base_dir: Path, write_table, tmp_path) -> None:
    table = write_table({"text": ["a", "b"], "sentiment": ["pos", "pos"]})
    config = TrainConfig(
        text_column="text", label_column="sentiment", base_model=str(tiny_base_dir)
    )
    with pytest.raises(InputError, match="at least two distinct labels"):
        train(str(table), str(tmp_path / "model"), config)
    assert not (tmp_path / "model").exists()


def test_missing_label_column_lists_columns(tiny_base_dir: Path, write_table, tmp_path) -> None:
    table = write_table({"text": ["a"], "y": ["b"]})
    config = TrainConfig(
        text_column="text", label_column="sentiment", base_model=str(tiny_base_dir)
    )
    with pytest.raises(InputError, match="'sentiment' not found; columns are: text, y"):
        train(str(table), str(tmp_path / "model"), config)


def test_model_out_that_is_not_a_model_is_refused(
    tiny_base_dir: Path, write_table, tmp_path
) -> None:
    table = write_table(_reviews(40, seed=0), "data/t.parquet")
    config = TrainConfig(
        text_column="text", label_column="sentiment", base_model=str(tiny_base_dir)
    )
    with pytest.raises(InputError, match="holds no bertetl model"):
        train(str(table), str(tmp_path / "data"), config)
    assert table.is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        train(str(table), str(tmp_path / "file"), config)


def test_retraining_replaces_an_earlier_model(tiny_base_dir: Path, write_table, tmp_path) -> None:
    table = write_table(_reviews(40, seed=0), "data/t.parquet")
    config = TrainConfig(
        text_column="text", label_column="sentiment", base_model=str(tiny_base_dir), epochs=1
    )
    train(str(table), str(tmp_path / "model"), config)
    first = (tmp_path / "model" / "model.safetensors").read_bytes()
    train(str(table), str(tmp_path / "model"), config.model_copy(update={"seed": 1}))
    assert (tmp_path / "model" / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]


def test_list_label_column_is_refused(tiny_base_dir: Path, write_table, tmp_path) -> None:
    table = write_table({"text": ["a", "b"], "sentiment": [["x"], ["y"]]})
    config = TrainConfig(
        text_column="text", label_column="sentiment", base_model=str(tiny_base_dir)
    )
    with pytest.raises(InputError, match="has type list<element: string>"):
        train(str(table), str(tmp_path / "model"), config)
