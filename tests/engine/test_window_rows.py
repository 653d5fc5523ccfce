"""`--emit windows`: one output row per token window, against plain-transformers references."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.io.manifest import config_hash
from bertetl.runs.enrich import enrich
from tests.engine.test_long_text import words
from tests.reference import reference_windowed, reference_windows

MAX_LENGTH = 48  # the tiny model's: 46 content tokens per window


def reference_window_rows(
    model_dir: Path, text: str, overlap: int
) -> list[tuple[np.ndarray, int, int, list[int]]]:
    """Each window of `text` by hand: plain transformers over `[CLS] window [SEP]` alone,
    mean-pooled and L2-normalised (the tiny model's modules), its character span from the
    tokenizer's offset mapping, and its content tokens."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    positions = reference_windows(list(range(len(ids))), MAX_LENGTH - 2, overlap, 64)
    rows = []
    with torch.no_grad():
        for window in positions:
            tokens = [ids[i] for i in window]
            input_ids = torch.tensor([[tokenizer.cls_token_id, *tokens, tokenizer.sep_token_id]])
            vector = model(input_ids=input_ids).last_hidden_state.mean(dim=1)[0]
            vector = vector / vector.norm()
            rows.append((vector.numpy(), offsets[window[0]][0], offsets[window[-1]][1], tokens))
    return rows


def _run(tmp_path: Path, texts: list[str | None], **options: object) -> pa.Table:
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), src)
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.parquet"
    config = EngineConfig(text_column="text", device="cpu", long_text="window", **options)
    report = enrich(src, out, config)
    assert not report.failures
    return pq.read_table(out)


@pytest.mark.parametrize("overlap", [0, 8])
def test_window_rows_match_plain_transformers(
    tmp_path: Path, tiny_embed_dir: Path, overlap: int
) -> None:
    from transformers import AutoTokenizer

    texts = [words(n, n) for n in (3, 40, 70, 300)] + ["  padded short text  "]
    table = _run(
        tmp_path,
        texts,
        embed_model=str(tiny_embed_dir),
        window_overlap=overlap,
        emit="rows,windows",
        batch_tokens=256,
        token_stats=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_dir)
    expected = [reference_window_rows(tiny_embed_dir, text, overlap) for text in texts]
    assert table.num_rows == sum(len(rows) for rows in expected)
    assert max(len(rows) for rows in expected) > 3 and min(len(rows) for rows in expected) == 1
    got = table.to_pylist()
    row_vectors, counts = reference_windowed(tiny_embed_dir, texts, MAX_LENGTH, overlap, 64)
    position = 0
    for row, (text, windows) in enumerate(zip(texts, expected, strict=True)):
        for k, (vector, start, end, tokens) in enumerate(windows):
            out = got[position]
            position += 1
            assert (out["id"], out["text"], out["window"]) == (row, text, k)
            assert (out["char_start"], out["char_end"]) == (start, end)
            # the span slices the text back to the window's tokens (whitespace aside; a
            # window may start inside a word, at a ## piece; [UNK] stands for what the tiny
            # vocabulary lacks)
            decoded = tokenizer.decode(tokens).replace(" ", "").removeprefix("##")
            pattern = re.escape(decoded).replace(re.escape("[UNK]"), ".+?")
            assert re.fullmatch(pattern, text[start:end].replace(" ", "").lower())
            np.testing.assert_allclose(out["embedding"], vector, atol=1e-5)
            np.testing.assert_allclose(out["row_embedding"], row_vectors[row], atol=1e-5)
            assert out["windows"] == counts[row] == len(windows)
            assert out["enrich_error"] is None
    # a short text is one row: window 0, spanning its text (surrounding spaces aside)
    last = got[-1]
    assert (last["window"], last["char_start"], last["char_end"]) == (0, 2, len(texts[-1]) - 2)


def test_window_rows_keep_failed_rows_and_their_columns(
    tmp_path: Path, tiny_embed_dir: Path
) -> None:
    texts = [None, words(120, 1), "   ", "ok"]
    table = _run(tmp_path, texts, embed_model=str(tiny_embed_dir), emit="windows", prefix="w_")
    added = ["w_window", "w_char_start", "w_char_end", "w_embedding", "w_enrich_error"]
    assert table.schema.names == ["id", "text", *added]
    rows = table.to_pylist()
    windows = [r["w_window"] for r in rows]
    assert windows[0] is None and windows[-2] is None and windows[-1] == 0
    assert windows[1:-2] == list(range(len(windows) - 3)) and len(windows) > 5
    failed = [r for r in rows if r["w_enrich_error"] is not None]
    assert [r["id"] for r in failed] == [0, 2]
    assert all(r["w_embedding"] is None and r["w_char_start"] is None for r in failed)


def test_rows_mode_is_unchanged_and_windows_change_the_hash(tiny_embed_dir: Path) -> None:
    base = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), long_text="window")
    models = {"embed": "fingerprint"}
    same = base.model_copy(update={"emit": "rows"})
    assert config_hash(same, models) == config_hash(base, models)
    windows = EngineConfig(**{**base.model_dump(), "emit": "windows"})
    both = EngineConfig(**{**base.model_dump(), "emit": "rows,windows"})
    hashes = {config_hash(c, models) for c in (base, windows, both)}
    assert len(hashes) == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs --long-text window"),
        ({"long_text": "window", "classify_model": "x"}, "takes no other model"),
    ],
)
def test_emit_windows_is_refused_where_it_cannot_apply(
    tiny_embed_dir: Path, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), emit="windows", **options)


@pytest.mark.slow  # worker processes
def test_window_rows_are_the_same_through_worker_processes(
    tmp_path: Path, tiny_embed_dir: Path
) -> None:
    """The spans and window embeddings cross the tokenizer pool and the worker pool."""
    texts = [words(n, n) for n in (5, 90, 200, 12)]
    options = dict(embed_model=str(tiny_embed_dir), emit="rows,windows", window_rows=2)
    here = _run(tmp_path, texts, **options)
    pooled = _run(tmp_path, texts, tokenizers=2, **options)
    assert pooled.to_pylist() == here.to_pylist()
