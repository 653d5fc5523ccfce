"""The tiny models are the same in every process, so a tolerance tuned on them holds in CI too."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from tests.conftest import CORPUS, _build_tokenizer


def test_the_tiny_tokenizer_is_built_the_same_every_time(tmp_path: Path) -> None:
    # WordPieceTrainer broke ties in hash-map order: its vocab differed between builds, so
    # the same text met other ids and the tiny models gave other outputs from run to run
    first, second = tmp_path / "a", tmp_path / "b"
    _build_tokenizer(first)
    _build_tokenizer(second)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(first)
    # every word of the corpus is one token; other words fall back to `##` characters
    assert tokenizer.tokenize(CORPUS[1]) == CORPUS[1].split()
    assert tokenizer.tokenize("fine") == ["f", "##i", "##n", "##e"]
    assert tokenizer.tokenize("café 東京") == ["cafe", "東", "京"]
