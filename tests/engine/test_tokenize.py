from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from bertetl.engine.tokenize import (
    BLANK_TEXT,
    EMPTY_TEXT,
    NULL_TEXT,
    TokenizeStage,
    ValidateTextStage,
    text_problems,
)


def test_text_problems_flags_null_empty_and_blank() -> None:
    text = pa.array(["ok", None, "", "  \t\n", " x "])
    assert text_problems(text).to_pylist() == [None, NULL_TEXT, EMPTY_TEXT, BLANK_TEXT, None]


def _tokenize(model_dir: Path, texts: list, max_length: int | None = None) -> list[list[int]]:
    batch = pa.RecordBatch.from_pydict({"text": pa.array(texts, pa.string())})
    validate = ValidateTextStage("text")
    stage = TokenizeStage(model_dir, "text", validate.error_column, "k", max_length)
    stage.setup()
    (out,) = stage(validate([batch]))
    windows = out.column(stage.tokens_column).to_pylist()
    assert all(len(row) <= 1 for row in windows)  # truncate mode: one token window at most
    return [row[0] if row else [] for row in windows], stage


def test_tokens_match_the_tokenizer_and_skip_invalid_rows(tiny_embed_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokens, _ = _tokenize(tiny_embed_dir, ["hello world", None, "  ", "the fox"])
    reference = AutoTokenizer.from_pretrained(tiny_embed_dir)
    assert tokens[0] == reference("hello world")["input_ids"]
    assert tokens[1] == [] and tokens[2] == []
    assert tokens[3] == reference("the fox")["input_ids"]


def test_max_length_comes_from_sentence_bert_config(tiny_embed_dir: Path) -> None:
    tokens, stage = _tokenize(tiny_embed_dir, ["word " * 500])
    assert stage.max_length == 48
    assert len(tokens[0]) == 48
    assert stage.truncated_rows == 1


def test_max_length_option_overrides(tiny_embed_dir: Path) -> None:
    tokens, stage = _tokenize(tiny_embed_dir, ["word " * 500, "the fox"], max_length=10)
    assert len(tokens[0]) == 10
    fits_exactly = _tokenize(tiny_embed_dir, ["the fox"], max_length=len(tokens[1]))[1]
    assert stage.truncated_rows == 1 and fits_exactly.truncated_rows == 0


def test_the_backend_batch_gives_the_tokenizers_own_ids_on_hostile_text() -> None:
    """The stage encodes through the Rust backend (`encode_batch_fast`): the same ids as
    `tokenizer(text)` of the real MiniLM tokenizer, on text that exercises its normalizer
    and pre-tokenizer (accents, CJK, emoji, controls, a literal [SEP], runs of spaces)."""
    from transformers import AutoTokenizer

    from bertetl.engine.model_files import resolve_model_dir

    model = resolve_model_dir("minilm")
    texts = [
        "Ça m'a plu, même si la fin était prévisible. 🙂",
        "这部电影的画面很美",
        "  leading and trailing   spaces  ",
        "a [SEP] in the text and [CLS] too",
        "\ufb01nancial \uff26\uff35\uff2c\uff2c combining e\u0301 and zero\u200bwidth",
        "tab\there\nnewline\x07bell",
        "supercalifragilisticexpialidocious" * 3,
        "x",
    ]
    tokens, _ = _tokenize(model, texts, max_length=64)
    reference = AutoTokenizer.from_pretrained(model)
    for text, ids in zip(texts, tokens, strict=True):
        assert ids == reference(text, truncation=True, max_length=64)["input_ids"], text


def test_split_special_tokens_survives_the_snapshot(tiny_embed_dir: Path, tmp_path: Path) -> None:
    """A model whose tokenizer_config sets `split_special_tokens` tokenizes a literal [SEP] as
    text, in this process and from the snapshot a worker gets: the Rust flag behind it is
    not kept in `tokenizer.json`, so the snapshot carries it."""
    import json
    import shutil

    from transformers import AutoTokenizer

    model = tmp_path / "split"
    shutil.copytree(tiny_embed_dir, model)
    path = model / "tokenizer_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"split_special_tokens": True}))
    texts = ["the fox [SEP] good", "[CLS] hello"]
    reference = AutoTokenizer.from_pretrained(model)
    want = [reference(text)["input_ids"] for text in texts]
    assert want != [AutoTokenizer.from_pretrained(tiny_embed_dir)(t)["input_ids"] for t in texts]
    tokens, stage = _tokenize(model, texts)
    assert tokens == want
    worker = TokenizeStage(model, "text", stage.error_column, "k")
    worker.setup(stage.snapshot())
    assert worker.encode(texts) == want
