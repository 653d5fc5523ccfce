"""Recall@10 of each `--embed-precision` against float32 on the demo's reviews.

Embeds the demo's seeded 2,000-review sample with MiniLM through `bertetl.enrich`, then, for
each precision, stores the vectors as `--embed-precision` does (`bertetl.engine.embed.quantize`,
int8/uint8 ranges from the first window of rows: here the whole sample) and searches every
review's 10 nearest other reviews: float16 by dot product, int8/uint8 by the dot product of
the stored integers (what a vector store does with them), binary/ubinary by Hamming distance.
Recall@10 is the share of the float32 top 10 that each finds.

    .venv/bin/python demo/precision_recall.py [--rows 2000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bertetl import EngineConfig, enrich
from bertetl.bench.corpus import rotten_tomatoes
from bertetl.engine.embed import PRECISION_TYPES, quantization_ranges, quantize

TOP = 10


def top_k(scores: np.ndarray) -> np.ndarray:
    """Each row's TOP best other rows (scores: higher is nearer; the diagonal is excluded)."""
    np.fill_diagonal(scores, -np.inf)
    return np.argpartition(-scores, TOP, axis=1)[:, :TOP]


def cosines(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float32)
    values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    return values @ values.T


def similarities(stored: np.ndarray, precision: str, ranges: np.ndarray) -> dict[str, np.ndarray]:
    """Pairwise scores of stored vectors as a search over them would rank them: the stored
    values' cosine (Hamming distance for bits) and, for int8/uint8, the cosine of the
    values they stand for (each bucket's middle)."""
    if precision.endswith("binary"):
        flip = 0x80 if precision == "binary" else 0
        bits = np.unpackbits(stored.view(np.uint8) ^ flip, axis=1).astype(np.float32)
        return {"stored": -(bits @ (1 - bits).T + (1 - bits) @ bits.T)}  # minus Hamming
    scores = {"stored": cosines(stored)}
    if precision in ("int8", "uint8"):
        buckets = stored.astype(np.float32) + (128 if precision == "int8" else 0)
        steps = (ranges[1] - ranges[0]) / 255
        scores["dequantized"] = cosines(ranges[0] + (buckets + 0.5) * steps)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    table = rotten_tomatoes()
    picked = np.random.default_rng(1).permutation(table.num_rows)[: args.rows]
    with tempfile.TemporaryDirectory() as scratch:
        src = Path(scratch) / "src.parquet"
        pq.write_table(table.take(np.sort(picked)).select(["text"]), src)
        enrich(
            str(src),
            str(Path(scratch) / "out"),
            EngineConfig(text_column="text", embed_model="minilm"),
        )
        column = pq.read_table(Path(scratch) / "out").column("embedding").combine_chunks()
    floats = np.stack(column.drop_null().to_numpy(zero_copy_only=False)).astype(np.float32)
    truth = top_k(floats @ floats.T)
    ranges = quantization_ranges(floats)
    print(f"{len(floats)} reviews, all-MiniLM-L6-v2 (384 d); recall@{TOP} against float32")
    print("| precision | bytes per vector | recall@10, stored values | dequantized |")
    print("|---|---|---|---|")
    for precision in PRECISION_TYPES:
        stored = quantize(floats, precision, ranges)
        recalls = []
        for scores in similarities(stored, precision, ranges).values():
            found = top_k(scores)
            pairs = zip(found, truth, strict=True)
            recalls.append(f"{np.mean([len(set(a) & set(b)) / TOP for a, b in pairs]):.3f}")
        row = [precision, str(stored.nbytes // len(stored)), *recalls, "", ""][:4]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
