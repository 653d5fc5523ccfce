"""Labelled tables with predictions in the columns `enrich --classify-model --scores` writes
(built with `bertetl.schema.classify_fields`, as the engine builds them), from seeded random
probabilities that lean towards the true label."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from bertetl.schema import classify_fields


def single_label_table(
    truth: list[str | None],
    labels: list[str],
    seed: int = 0,
    lean: float = 1.5,
    scores: bool = True,
    missing: set[int] = frozenset(),
) -> pa.Table:
    """`text`, `y` (the truth) and `label`, `score`, `scores`: softmax of noise plus `lean` on
    the true label. Rows in `missing` have no prediction (as rows with an enrich_error)."""
    rng = np.random.default_rng(seed)
    n, k = len(truth), len(labels)
    logits = rng.normal(size=(n, k))
    for i, label in enumerate(truth):
        if label in labels:
            logits[i, labels.index(label)] += lean
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities = probabilities.astype(np.float32)
    gone = np.array([i in missing for i in range(n)], dtype=bool)
    label = pa.array([labels[j] for j in probabilities.argmax(axis=1)], pa.string(), mask=gone)
    columns = {
        "text": pa.array([f"review number {i} of {n}" for i in range(n)]),
        "y": pa.array(truth, pa.string()),
        "label": label,
        "score": pa.array(probabilities.max(axis=1), mask=gone),
    }
    if scores:
        columns["scores"] = pa.FixedSizeListArray.from_arrays(
            pa.array(probabilities.ravel()), k, mask=pa.array(gone)
        )
    fields = [pa.field("text", pa.string()), pa.field("y", pa.string())]
    fields += classify_fields("", labels, multi_label=False, include_scores=scores)
    return pa.table(columns, schema=pa.schema(fields))


def multi_label_table(
    truth: list[list[str] | None], labels: list[str], seed: int = 0, threshold: float = 0.5
) -> pa.Table:
    """`text`, `y` (a list of true labels) and `label`, `score`, `scores`, `labels` (sigmoid
    probabilities leaning towards the true labels; `labels` over `threshold`)."""
    rng = np.random.default_rng(seed)
    n, k = len(truth), len(labels)
    logits = rng.normal(size=(n, k))
    for i, row in enumerate(truth):
        for label in row or []:
            logits[i, labels.index(label)] += 1.5
    probabilities = (1 / (1 + np.exp(-logits))).astype(np.float32)
    predicted = [[labels[j] for j in np.flatnonzero(p >= threshold)] for p in probabilities]
    fields = [pa.field("text", pa.string()), pa.field("y", pa.list_(pa.string()))]
    fields += classify_fields("", labels, multi_label=True, include_scores=True)
    columns = {
        "text": [f"ticket {i}" for i in range(n)],
        "y": truth,
        "label": [labels[j] for j in probabilities.argmax(axis=1)],
        "score": probabilities.max(axis=1),
        "scores": pa.FixedSizeListArray.from_arrays(pa.array(probabilities.ravel()), k),
        "labels": predicted,
    }
    return pa.table(columns, schema=pa.schema(fields))
