"""Length-sorted, token-budget batches with dynamic padding; results go back to input order."""

from __future__ import annotations

import numpy as np


def plan_batches(lengths: np.ndarray, token_budget: int, max_rows: int) -> list[np.ndarray]:
    """Cut the rows with tokens (length > 0) into batches of row positions.

    Rows are sorted longest first (stable), and each batch holds as many rows as fit
    `rows x longest <= token_budget`, at most `max_rows`, and at least one.
    """
    rows = np.flatnonzero(lengths > 0)
    order = rows[np.argsort(-lengths[rows], kind="stable")]
    batches = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, min(max_rows, token_budget // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


def pad_batch(
    offsets: np.ndarray, values: np.ndarray, rows: np.ndarray, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gather the token ids of `rows` from a flat list layout into a right-padded matrix.

    Returns `(input_ids, attention_mask)`, both int64 of shape (len(rows), longest row).
    """
    starts = offsets[rows].astype(np.int64)
    lengths = offsets[rows + 1].astype(np.int64) - starts
    width = int(lengths.max())
    positions = np.arange(width, dtype=np.int64)
    mask = positions[None, :] < lengths[:, None]
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    input_ids[mask] = values[(starts[:, None] + positions[None, :])[mask]]
    return input_ids, mask.astype(np.int64)
