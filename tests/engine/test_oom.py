"""`engine.oom.forward_splitting`: a batch that runs out of memory is split, not lost."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bertetl.engine.oom import forward_splitting, join_padded


def _stage() -> SimpleNamespace:
    return SimpleNamespace(oom_splits=0, token_budget=64, device=torch.device("cpu"))


def test_a_batch_too_big_is_split_until_it_fits_in_row_order() -> None:
    table = np.arange(30, dtype=np.float32).reshape(10, 3)
    sizes = []

    def forward(rows: np.ndarray) -> np.ndarray:
        assert torch.is_inference_mode_enabled()
        if len(rows) > 3:
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        sizes.append(len(rows))
        return table[rows]

    stage = _stage()
    rows = np.array([9, 0, 4, 2, 7, 1, 3, 8, 5, 6])
    np.testing.assert_array_equal(forward_splitting(stage, forward, rows), table[rows])
    # 10 -> 5 + 5 -> (2 + 3) + (2 + 3): three splits, the budget halved at each
    assert sizes == [2, 3, 2, 3]
    assert stage.oom_splits == 3 and stage.token_budget == 8


def test_one_row_that_does_not_fit_raises() -> None:
    def forward(rows: np.ndarray) -> np.ndarray:
        raise torch.OutOfMemoryError("simulated CUDA out of memory")

    stage = _stage()
    with pytest.raises(torch.OutOfMemoryError):
        forward_splitting(stage, forward, np.array([0, 1]))
    assert stage.oom_splits == 1  # split once, then the first single row raised


def test_per_token_outputs_are_padded_to_the_longest_half() -> None:
    short = np.ones((2, 3, 4))
    long = np.full((1, 5, 4), 2.0)
    joined = join_padded([short, long])
    assert joined.shape == (3, 5, 4)
    np.testing.assert_array_equal(joined[:2, :3], short)
    assert not joined[:2, 3:].any()
    np.testing.assert_array_equal(joined[2], long[0])
