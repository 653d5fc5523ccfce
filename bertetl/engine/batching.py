"""Length-sorted, token-budget batches with dynamic padding; results go back to input order."""

from __future__ import annotations

import numpy as np

#: A batch is also cut where rows get this much shorter than its longest row (once it holds
#: `MIN_ROWS_BEFORE_SHORTER_CUT` rows), so short texts do not share a batch padded to twice
#: their length; on short headlines this took padding from 19% to a few %.
SHORTER_CUT = 0.9
MIN_ROWS_BEFORE_SHORTER_CUT = 16


def plan_batches(lengths: np.ndarray, token_budget: int, max_rows: int) -> list[np.ndarray]:
    """Cut the rows with tokens (length > 0) into batches of row positions.

    Rows are sorted longest first (stable). A batch takes rows while `rows x longest` stays
    within `token_budget` and rows within `max_rows` (at least one row); it also ends before
    a row shorter than `SHORTER_CUT x longest` once it has `MIN_ROWS_BEFORE_SHORTER_CUT` rows.
    """
    rows = np.flatnonzero(lengths > 0)
    order = rows[np.argsort(-lengths[rows], kind="stable")]
    sorted_lengths = lengths[order]
    batches = []
    start = 0
    while start < len(order):
        longest = int(sorted_lengths[start])
        size = max(1, min(max_rows, token_budget // longest))
        # first row (from MIN_ROWS on) that is much shorter than the longest: cut there
        shorter = np.flatnonzero(
            sorted_lengths[start + MIN_ROWS_BEFORE_SHORTER_CUT : start + size]
            < SHORTER_CUT * longest
        )
        if len(shorter):
            size = MIN_ROWS_BEFORE_SHORTER_CUT + int(shorter[0])
        batches.append(order[start : start + size])
        start += size
    return batches


def pad_batch(
    offsets: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    pad_id: int,
    shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gather the token ids of `rows` from a flat list layout into a right-padded matrix.

    Returns `(input_ids, attention_mask)`, both int64 of shape (len(rows), longest row), or
    `shape` (at least that) for a replayed CUDA graph (`graph_shape`): the rows beyond
    `rows` are filler, one unmasked pad token each (no row is wholly masked), to be dropped.
    """
    starts = offsets[rows].astype(np.int64)
    lengths = offsets[rows + 1].astype(np.int64) - starts
    longest = int(lengths.max())
    height, width = shape or (len(rows), longest)
    if height < len(rows) or width < longest:
        raise ValueError(f"shape {shape} is smaller than the batch ({len(rows)}, {longest})")
    lengths = np.concatenate([lengths, np.ones(height - len(rows), dtype=np.int64)])
    starts = np.concatenate([starts, np.zeros(height - len(rows), dtype=np.int64)])
    positions = np.arange(width, dtype=np.int64)
    mask = positions[None, :] < lengths[:, None]
    real = mask.copy()
    real[len(rows) :] = False
    input_ids = np.full((height, width), pad_id, dtype=np.int64)
    input_ids[real] = values[(starts[:, None] + positions[None, :])[real]]
    return input_ids, mask.astype(np.int64)


#: Batches replayed through CUDA graphs (`--cuda-graphs`) are padded to a width that is a
#: multiple of this and to a power-of-two row count, so a run captures few shapes.
GRAPH_WIDTH_STEP = 32


def graph_width(lengths: np.ndarray, max_width: int | None = None) -> np.ndarray:
    """Token lengths rounded up to the graph width step (0 stays 0), at most `max_width` (the
    model's positions): what a batch of rows that long is padded to for a CUDA graph, so
    batches are planned on these lengths."""
    widths = -(-lengths // GRAPH_WIDTH_STEP) * GRAPH_WIDTH_STEP
    return (
        widths if max_width is None else np.minimum(widths, max(max_width, lengths.max(initial=0)))
    )


def graph_shape(
    rows: int, longest: int, token_budget: int, max_rows: int, max_width: int | None = None
) -> tuple[int, int]:
    """The (rows, width) a batch of `rows` rows, the longest `longest` tokens, is padded to
    for a CUDA graph: the width up to the step (`graph_width`, at most `max_width`); the rows
    up to a power of two, but no more than the token budget holds at that width or `max_rows`
    (nor fewer than `rows`), so the padded batch costs no more memory than a planned one."""
    width = int(graph_width(np.array(longest), max_width))
    cap = max(rows, min(max_rows, token_budget // width))
    return min(1 << (rows - 1).bit_length(), cap), width


def pack_batch(
    offsets: np.ndarray, values: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gather the token ids of `rows` end to end, for the unpadded path (`engine.unpadded`).

    Returns `(input_ids, position_ids, starts)`: the first two int64 of shape (1, tokens),
    positions restarting at 0 for each row; `starts` (len(rows) + 1,) int64 where each row
    begins in them, then the total.
    """
    first = offsets[rows].astype(np.int64)
    lengths = offsets[rows + 1].astype(np.int64) - first
    starts = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    row_of_token = np.repeat(np.arange(len(rows)), lengths)
    positions = np.arange(int(starts[-1]), dtype=np.int64) - starts[:-1][row_of_token]
    input_ids = values[first[row_of_token] + positions].astype(np.int64)
    return input_ids[None, :], positions[None, :], starts
