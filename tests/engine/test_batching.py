from __future__ import annotations

import numpy as np
import pytest

from bertetl.engine.batching import pad_batch, plan_batches


@pytest.mark.parametrize("budget,max_rows", [(1, 4), (50, 3), (64, 100), (10_000, 7)])
def test_plan_covers_every_row_with_tokens_once_within_budget(budget: int, max_rows: int) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, size=300)
    batches = plan_batches(lengths, budget, max_rows)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == np.flatnonzero(lengths > 0).tolist()
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= budget


def test_plan_sorts_longest_first() -> None:
    lengths = np.array([3, 9, 1, 9, 5])
    batches = plan_batches(lengths, token_budget=100, max_rows=2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]


def test_pad_batch_matches_a_python_reference() -> None:
    rows_tokens = [[5, 6, 7], [8], [], [9, 10, 11, 12]]
    offsets = np.cumsum([0] + [len(r) for r in rows_tokens])
    values = np.array([t for r in rows_tokens for t in r])
    ids, mask = pad_batch(offsets, values, np.array([3, 0, 1]), pad_id=0)
    assert ids.tolist() == [[9, 10, 11, 12], [5, 6, 7, 0], [8, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]]


def test_plan_cuts_where_rows_get_much_shorter() -> None:
    lengths = np.array([20] * 30 + [10] * 30)
    batches = plan_batches(lengths, token_budget=100_000, max_rows=1000)
    assert [len(b) for b in batches] == [30, 30]
    assert all(len(set(lengths[b])) == 1 for b in batches)
    # but never before MIN_ROWS rows: a few long rows ride with shorter ones
    few = plan_batches(np.array([20] * 3 + [10] * 30), token_budget=100_000, max_rows=1000)
    assert [len(b) for b in few] == [16, 17]
