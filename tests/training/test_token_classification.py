"""`bertetl train --task token-classification`: BIO alignment, a tiny fine-tune, seqeval metrics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bertetl.cli import app
from bertetl.errors import InputError
from bertetl.training.conll import SPAN_TYPE, read_conll, sentence_spans, sentences_table
from bertetl.training.token_classification import (
    TokenTrainConfig,
    bio_tags,
    load_spans,
    train_tokens,
)

WNUT = Path(__file__).parents[1] / "data" / "wnut17"

#: Words of the tiny tokenizer's corpus (several split into subwords), by entity type.
PEOPLE = ["fox", "dog", "café"]
PLACES = ["東京", "parquet tables", "lazy"]
OTHER = "the quick brown jumps over a movie that was good and fun with numbers 123 ! ?".split()


def _sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Random sentences as (words, BIO tags per word)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words: list[str] = []
        tags: list[str] = []
        for _ in range(rng.randint(3, 8)):
            kind = rng.random()
            if kind < 0.2:
                words.append(rng.choice(PEOPLE))
                tags.append("B-PER")
            elif kind < 0.4:
                place = rng.choice(PLACES).split()
                words += place
                tags += ["B-LOC"] + ["I-LOC"] * (len(place) - 1)
            else:
                words.append(rng.choice(OTHER))
                tags.append("O")
        out.append((words, tags))
    return out


def test_bio_tags_match_a_word_level_reference(tiny_base_dir: Path) -> None:
    """Tags from character offsets equal tags from the tokenizer's word ids (the words'
    own tags, B only on an entity's first token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    for words, word_tags in _sentences(40, seed=1):
        text, spans = sentence_spans(words, word_tags)
        encoding = tokenizer(text, return_offsets_mapping=True)
        ours = bio_tags(
            np.array(encoding["offset_mapping"]),
            [(s["start"], s["end"], s["label"]) for s in spans],
        )
        by_words = tokenizer(words, is_split_into_words=True)
        expected, previous = [], None
        for word in by_words.word_ids():
            if word is None:
                expected.append("O")
            elif word_tags[word] != "O" and word == previous:
                expected.append("I-" + word_tags[word][2:])
            else:
                expected.append(word_tags[word])
            previous = word
        assert ours == expected, text
        assert by_words["input_ids"] == encoding["input_ids"]


def test_conll_reader_builds_character_spans(tmp_path: Path) -> None:
    conll = tmp_path / "x.conll"
    conll.write_text(
        "Empire\tB-location\nState\tI-location\n=\tO\nESB\tB-location\n\t\n"
        "hi\tO\n@bob\tI-person\nand\tO\nAnn\tB-person\nLee\tI-person\nX\tI-group\n"
    )
    table = sentences_table(read_conll(conll))
    assert table.schema.field("spans").type == pa.list_(SPAN_TYPE)
    rows = table.to_pylist()
    assert rows[0]["text"] == "Empire State = ESB"
    assert [(s["label"], rows[0]["text"][s["start"] : s["end"]]) for s in rows[0]["spans"]] == [
        ("location", "Empire State"),
        ("location", "ESB"),
    ]
    assert [(s["label"], rows[1]["text"][s["start"] : s["end"]]) for s in rows[1]["spans"]] == [
        ("person", "@bob"),
        ("person", "Ann Lee"),
        ("group", "X"),
    ]


def test_wnut_sample_is_consistent() -> None:
    for name, rows in (("train", 1500), ("test", 500)):
        table = pq.read_table(WNUT / f"{name}.parquet")
        assert table.num_rows == rows
        for row in table.slice(0, 200).to_pylist():
            for span in row["spans"]:
                piece = row["text"][span["start"] : span["end"]]
                assert piece == piece.strip() and piece
    assert (WNUT / "LICENSE").is_file() and "CC BY 4.0" in (WNUT / "LICENSE").read_text()


def _table(sentences: list[tuple[list[str], list[str]]]) -> pa.Table:
    return sentences_table(sentences)


def test_train_writes_seqeval_metrics(tiny_base_dir: Path, tmp_path: Path) -> None:
    import torch
    from seqeval.metrics import classification_report, f1_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    pq.write_table(_table(_sentences(48, seed=2)), tmp_path / "train.parquet")
    pq.write_table(_table(_sentences(16, seed=3)), tmp_path / "held.parquet")
    config = TokenTrainConfig(
        text_column="text",
        base_model=str(tiny_base_dir),
        epochs=8,
        batch_size=8,
        learning_rate=2e-3,
        eval_table=str(tmp_path / "held.parquet"),
        device="cpu",
    )
    out = tmp_path / "model"
    report = train_tokens(str(tmp_path / "train.parquet"), str(out), config)
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["BertForTokenClassification"]
    assert list(saved["id2label"].values()) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    # independent: the saved model's argmax tags against word-level gold tags
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    gold, predicted = [], []
    for words, word_tags in _sentences(16, seed=3):
        encoding = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            best = model(**encoding).logits[0].argmax(-1).tolist()
        ids = encoding.word_ids()
        gold.append(
            [
                "I-" + word_tags[w][2:] if word_tags[w] != "O" and w == ids[i - 1] else word_tags[w]
                for i, w in enumerate(ids)
                if w is not None
            ]
        )
        predicted.append(
            [model.config.id2label[b] for b, w in zip(best, ids, strict=True) if w is not None]
        )
    assert metrics["f1"] == pytest.approx(f1_score(gold, predicted), abs=1e-9)
    assert report.f1 == metrics["f1"] and report.eval_rows == 16 and report.train_rows == 48
    per_type = classification_report(gold, predicted, output_dict=True, zero_division=0)
    for name in ("LOC", "PER"):
        assert metrics["per_type"][name]["f1"] == pytest.approx(per_type[name]["f1-score"])
        assert metrics["per_type"][name]["support"] == per_type[name]["support"]
    assert metrics["f1"] > 0.4, metrics["f1"]  # it learned something
    assert (out / "eval" / "report.txt").is_file()
    training = json.loads((out / "training_metrics.json").read_text())
    assert training["task"] == "token-classification" and training["f1"] == report.f1


def test_bad_spans_are_one_line_errors(write_table) -> None:
    path = write_table(
        {
            "text": ["abc"],
            "spans": pa.array([[{"start": 1, "end": 9, "label": "X"}]], pa.list_(SPAN_TYPE)),
        }
    )
    with pytest.raises(InputError, match=r"row 0: span .* inside its 3-character text"):
        load_spans(str(path), TokenTrainConfig(text_column="text"))
    path = write_table({"text": ["abc"], "spans": ["x"]}, "other/part-0.parquet")
    with pytest.raises(InputError, match="expected list<struct<start: int, end: int"):
        load_spans(str(path), TokenTrainConfig(text_column="text"))


def test_cli_task_option(tiny_base_dir: Path, tmp_path: Path) -> None:
    pq.write_table(_table(_sentences(24, seed=4)), tmp_path / "t.parquet")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "t.parquet"),
            str(tmp_path / "m"),
            "--text-column",
            "text",
            "--task",
            "token-classification",
            "--base-model",
            str(tiny_base_dir),
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "entity precision" in result.output
    assert (tmp_path / "m" / "eval" / "metrics.json").is_file()
    missing = runner.invoke(
        app, ["train", str(tmp_path / "t.parquet"), str(tmp_path / "n"), "--text-column", "text"]
    )
    assert missing.exit_code == 2 and "--label-column" in missing.output
