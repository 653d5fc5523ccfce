"""Long documents: window mode against truncate mode and against the hand-written
alternative a user would write (cut the tokens into chunks, decode them, sentence-transformers
`encode` over the chunks, then a weighted group mean), end to end and in the same run.

Every system reads the same Parquet file and writes a Parquet file with an embedding column;
the figures are ratios between systems measured one after the other in one process, in
alternating rounds (`repeats`), each system's median against the others'. Every run loads its
model, as a one-off job does.
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


def _engine(src: Path, dest: Path, model: str, long_text: str, device: str) -> dict[str, Any]:
    from bertetl.config import EngineConfig
    from bertetl.runs.enrich import enrich

    config = EngineConfig(
        text_column="text", embed_model=model, device=device, long_text=long_text, token_stats=True
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


def _hand_written(
    src: Path, dest: Path, model_dir: Path, overlap: int, max_windows: int, device: str
) -> dict:
    """What a user writes without window mode: same windows, cut by hand, re-encoded by ST
    (in the device's default precision, as the engine runs)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from bertetl.engine.encoders import resolve_device, resolve_dtype

    table = pq.read_table(src)
    texts = table.column("text").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    where = resolve_device(device)
    model = SentenceTransformer(str(model_dir), device=str(where))
    dtype = resolve_dtype("auto", where)  # the engine's default precision on this device
    if dtype != torch.float32:
        model = model.to(dtype)
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


def run_long_text_bench(
    workdir: Path,
    documents: int = 24,
    model: str = "minilm",
    device: str = "cpu",
    repeats: int = 1,
) -> dict:
    """Time the three systems on the same long documents, `repeats` rounds in turn, on
    `device`; each system's median seconds, rows/s, tokens/s, and the ratios of medians."""
    from bertetl.engine.model_files import resolve_model_dir
    from bertetl.errors import ConfigError

    if documents < 1 or repeats < 1:
        raise ConfigError(
            f"--documents and --repeats are at least 1 (got {documents} and {repeats})"
        )
    model_dir = resolve_model_dir(model)
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "long.parquet"
    pq.write_table(pa.table({"id": range(documents), "text": long_documents(documents)}), src)
    runs = {
        "bertetl truncate": lambda: _engine(
            src, workdir / "truncate.parquet", model, "truncate", device
        ),
        "bertetl window": lambda: _engine(src, workdir / "window.parquet", model, "window", device),
        "hand-written chunks + ST": lambda: _hand_written(
            src, workdir / "hand.parquet", model_dir, overlap=32, max_windows=64, device=device
        ),
    }
    figures: dict[str, dict[str, Any]] = {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            figures[name] = run()
            times[name].append(round(time.perf_counter() - started, 2))
    systems: dict[str, dict[str, Any]] = {}
    for name, seconds in times.items():
        median = float(np.median(seconds))
        systems[name] = {
            **figures[name],
            "seconds": round(median, 2),
            "seconds_per_round": seconds,
            "rows_per_s": round(documents / median, 2),
            "model_tokens_per_s": round(figures[name]["model_tokens"] / median, 1),
        }
    window = pq.read_table(workdir / "window.parquet")
    hand = pq.read_table(workdir / "hand.parquet")
    a = np.array(window.column("embedding").to_pylist())
    b = np.array(hand.column("embedding").to_pylist())
    tokens = np.array(window.column("tokens").to_pylist())
    return {
        "documents": documents,
        "device": device,
        "repeats": repeats,
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
