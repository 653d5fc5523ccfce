from __future__ import annotations

import numpy as np
import pytest

from bertetl.engine.batching import (
    GRAPH_WIDTH_STEP,
    graph_shape,
    graph_width,
    pad_batch,
    plan_batches,
)


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


def test_pad_batch_to_a_graph_shape_adds_filler_rows_of_one_pad_token() -> None:
    rows_tokens = [[5, 6, 7], [8], [9, 10, 11, 12]]
    offsets = np.cumsum([0] + [len(r) for r in rows_tokens])
    values = np.array([t for r in rows_tokens for t in r])
    rows = np.array([2, 0])
    ids, mask = pad_batch(offsets, values, rows, pad_id=3, shape=(4, 6))
    plain_ids, plain_mask = pad_batch(offsets, values, rows, pad_id=3)
    assert ids.shape == mask.shape == (4, 6)
    assert ids[:2, :4].tolist() == plain_ids.tolist() and (ids[:2, 4:] == 3).all()
    assert mask[:2, :4].tolist() == plain_mask.tolist() and (mask[:2, 4:] == 0).all()
    # filler rows: never wholly masked (attention over nothing), and only pad tokens
    assert mask[2:].tolist() == [[1, 0, 0, 0, 0, 0]] * 2 and (ids[2:] == 3).all()
    with pytest.raises(ValueError, match="smaller than the batch"):
        pad_batch(offsets, values, rows, pad_id=3, shape=(1, 6))


def test_graph_widths_step_up_and_keep_empty_rows_empty() -> None:
    step = GRAPH_WIDTH_STEP
    lengths = np.array([0, 1, step - 1, step, step + 1, 7 * step + 3])
    assert graph_width(lengths).tolist() == [0, step, step, step, 2 * step, 8 * step]
    # never past the model's positions (a 500-position model), nor below a row's length
    assert graph_width(np.array([490, 500]), max_width=500).tolist() == [500, 500]
    assert graph_shape(3, 490, 32768, 256, max_width=500) == (4, 500)


@pytest.mark.parametrize("rows,longest", [(1, 5), (3, 40), (17, 100), (100, 64), (130, 250)])
def test_graph_shape_holds_the_batch_within_the_budget(rows: int, longest: int) -> None:
    budget, max_rows = 32768, 256
    height, width = graph_shape(rows, longest, budget, max_rows)
    assert width % GRAPH_WIDTH_STEP == 0 and longest <= width < longest + GRAPH_WIDTH_STEP
    assert height >= rows
    # a power of two, unless capped by what the budget (or the row cap) holds at that width
    cap = min(max_rows, budget // width)
    assert height & (height - 1) == 0 or height == max(rows, cap)
    assert height <= max(rows, cap)


def test_graph_planned_batches_take_few_shapes() -> None:
    """Batches planned on graph widths (as the stage plans them with --cuda-graphs) give a few
    shapes for hundreds of batches, each within the token budget."""
    rng = np.random.default_rng(1)
    budget, max_rows = 4096, 256
    shapes = set()
    batches = 0
    for _ in range(50):  # windows
        lengths = rng.integers(1, 257, size=1000)
        for batch in plan_batches(graph_width(lengths), budget, max_rows):
            height, width = graph_shape(len(batch), int(lengths[batch].max()), budget, max_rows)
            assert height * width <= budget
            shapes.add((height, width))
            batches += 1
    assert batches > 1000 and len(shapes) < 40
