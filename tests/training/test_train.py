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
from bertetl.training.train import stratified_split, train

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
    check_held_out_report(tmp_path / "model", _reviews(240, seed=0), report)
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


def check_held_out_report(model_dir: Path, data: dict, report) -> None:
    """MODEL_OUT/eval/ holds `bertetl evaluate`'s report of the held-out split, and its
    figures equal scikit-learn's on a plain transformers forward over the same rows."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    eval_dir = model_dir / "eval"
    assert {"metrics.json", "report.html", "confusion_matrix.png", "roc_curves.png"} <= {
        p.name for p in eval_dir.iterdir()
    }
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["rows"]["evaluated"] == report.eval_rows == 48
    assert (metrics["accuracy"], metrics["f1"]["macro"]) == (report.accuracy, report.macro_f1)
    names = ["neg", "pos"]
    ids = np.array([names.index(label) for label in data["sentiment"]])
    _, held = stratified_split(ids, 0.2, None, seed=0)  # the split train() made
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tokenizer([data["text"][i] for i in held], padding=True, return_tensors="pt")
    with torch.inference_mode():
        predicted = model(**batch).logits.argmax(-1).numpy()
    assert report.accuracy == pytest.approx(accuracy_score(ids[held], predicted))
    assert report.macro_f1 == pytest.approx(f1_score(ids[held], predicted, average="macro"))
    for pair in metrics["worst_confusions"]:  # the rows named are the table's own rows
        for example in pair["examples"]:
            assert example["file"] == "part-0.parquet"
            assert data["text"][example["row"]] == example["text"]
            assert data["sentiment"][example["row"]] == pair["true"]


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


def test_a_model_out_inside_the_training_table_is_refused(
    tiny_base_dir: Path, write_table, tmp_path
) -> None:
    """MODEL_OUT inside a TABLE folder would become part of the table (the next read of TABLE
    sees its files): refused before any training, and nothing is written there."""
    write_table(_reviews(40, seed=0), "data/date=1/part-0.parquet")
    write_table(_reviews(40, seed=1), "data/date=2/part-0.parquet")
    config = TrainConfig(
        text_column="text", label_column="sentiment", base_model=str(tiny_base_dir)
    )
    with pytest.raises(InputError, match=r"MODEL_OUT .* lies inside the training table"):
        train(str(tmp_path / "data"), str(tmp_path / "data" / "model"), config)
    assert not (tmp_path / "data" / "model").exists()


def test_a_model_out_holding_a_users_files_is_refused_not_deleted(
    tiny_base_dir: Path, write_table, tmp_path
) -> None:
    """MODEL_OUT is replaced whole: an earlier model to which a user added a file (a model
    card) is refused, naming the file, which is kept (it was deleted with exit 0)."""
    table = write_table(_reviews(40, seed=0), "data/t.parquet")
    config = TrainConfig(
        text_column="text", label_column="sentiment", base_model=str(tiny_base_dir), epochs=1
    )
    train(str(table), str(tmp_path / "model"), config)
    (tmp_path / "model" / "MODEL_CARD.md").write_text("# ours")
    with pytest.raises(
        InputError, match=r"holds 1 file\(s\) an earlier model does not: MODEL_CARD"
    ):
        train(str(table), str(tmp_path / "model"), config)
    assert (tmp_path / "model" / "MODEL_CARD.md").read_text() == "# ours"
