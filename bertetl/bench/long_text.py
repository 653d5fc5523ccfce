"""Long documents: window mode against truncate mode and against the hand-written
alternative a user would write (cut the tokens into chunks, decode them, sentence-transformers
`encode` over the chunks, then a weighted group mean), end to end and in the same run.

Every system reads the same Parquet file and writes a Parquet file with an embedding column;
the figures are ratios between systems measured one after the other in one process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Documents between these many content tokens (about; cut by characters first).
TOKENS_RANGE = (1_000, 8_000)


def long_documents(count: int, seed: int = 0) -> list[str]:
    """`count` documents of about 1-8k MiniLM tokens: rotten-tomatoes reviews joined in
    random order until each reaches its length (about 5.5 characters per token)."""
    from bertetl.bench.corpus import rotten_tomatoes

    reviews = rotten_tomatoes().column("text").to_pylist()
    rng = np.random.default_rng(seed)
    documents = []
    for _ in range(count):
        target = int(rng.integers(*TOKENS_RANGE)) * 5.5
        parts: list[str] = []
        size = 0
        while size < target:
            review = reviews[int(rng.integers(len(reviews)))]
            parts.append(review)
            size += len(review) + 1
        documents.append(" ".join(parts))
    return documents


def _engine(src: Path, dest: Path, model: str, long_text: str) -> dict[str, Any]:
    from bertetl.config import EngineConfig
    from bertetl.runs.enrich import enrich

    config = EngineConfig(
        text_column="text", embed_model=model, device="cpu", long_text=long_text, token_stats=True
    )
    report = enrich(src, dest, config)
    embed = report.stages["embed"]
    table = pq.read_table(dest, columns=["tokens", "windows", "truncated"])
    return {
        "model_tokens": embed.real_tokens,
        "padding_waste": round(embed.padding_waste, 4),
        "windows": int(np.nansum(np.array(table.column("windows").to_pylist(), dtype=float))),
        "truncated_rows": report.truncated_rows,
    }


def _hand_written(src: Path, dest: Path, model_dir: Path, overlap: int, max_windows: int) -> dict:
    """What a user writes without window mode: same windows, cut by hand, re-encoded by ST."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    table = pq.read_table(src)
    texts = table.column("text").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = SentenceTransformer(str(model_dir), device="cpu")
    width = model.max_seq_length - 2
    stride = width - overlap
    chunks: list[list[int]] = []
    owner: list[int] = []
    for row, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
        start = 0
        for _ in range(max_windows):
            chunks.append(ids[start : start + width])
            owner.append(row)
            if start + width >= len(ids):
                break
            start += stride
    vectors = model.encode(tokenizer.batch_decode(chunks), batch_size=32, convert_to_numpy=True)
    weights = np.array([len(c) for c in chunks], dtype=np.float64)
    sums = np.zeros((len(texts), vectors.shape[1]))
    np.add.at(sums, np.array(owner), vectors * weights[:, None])
    rows = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    flat = pa.array(rows.astype(np.float32).reshape(-1))
    embedding = pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])
    pq.write_table(table.append_column("embedding", embedding), dest)
    return {"model_tokens": int(weights.sum() + 2 * len(chunks)), "windows": len(chunks)}


def run_long_text_bench(workdir: Path, documents: int = 24, model: str = "minilm") -> dict:
    """Time the three systems on the same long documents; rows/s, tokens/s and ratios."""
    from bertetl.engine.model_files import resolve_model_dir

    model_dir = resolve_model_dir(model)
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "long.parquet"
    pq.write_table(pa.table({"id": range(documents), "text": long_documents(documents)}), src)
    systems: dict[str, dict[str, Any]] = {}
    runs = {
        "bertetl truncate": lambda: _engine(src, workdir / "truncate.parquet", model, "truncate"),
        "bertetl window": lambda: _engine(src, workdir / "window.parquet", model, "window"),
        "hand-written chunks + ST": lambda: _hand_written(
            src, workdir / "hand.parquet", model_dir, overlap=32, max_windows=64
        ),
    }
    for name, run in runs.items():
        started = time.perf_counter()
        figures = run()
        seconds = time.perf_counter() - started
        systems[name] = {
            **figures,
            "seconds": round(seconds, 2),
            "rows_per_s": round(documents / seconds, 2),
            "model_tokens_per_s": round(figures["model_tokens"] / seconds, 1),
        }
    window = pq.read_table(workdir / "window.parquet")
    hand = pq.read_table(workdir / "hand.parquet")
    a = np.array(window.column("embedding").to_pylist())
    b = np.array(hand.column("embedding").to_pylist())
    tokens = np.array(window.column("tokens").to_pylist())
    return {
        "documents": documents,
        "content_tokens": {
            "mean": int(tokens.mean()),
            "min": int(tokens.min()),
            "max": int(tokens.max()),
        },
        "systems": systems,
        "cosine_window_vs_hand_written_min": round(float((a * b).sum(1).min()), 5),
        "speedup_window_vs_hand_written": round(
            systems["hand-written chunks + ST"]["seconds"] / systems["bertetl window"]["seconds"], 2
        ),
        "tokens_per_s_window_over_truncate": round(
            systems["bertetl window"]["model_tokens_per_s"]
            / systems["bertetl truncate"]["model_tokens_per_s"],
            2,
        ),
    }
