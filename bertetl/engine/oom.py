"""One batched forward pass with the out-of-memory split, for every model stage.

A batch that runs out of device memory is split in two and each half run on its own (again
split where it still does not fit); the stage's token budget is halved at each split, so the
batches planned after it are smaller, and the split is counted in its `oom_splits`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class SplitsOnOom(Protocol):
    """What `forward_splitting` reads and updates on a model stage."""

    oom_splits: int
    token_budget: int
    device: Any


def forward_splitting(
    stage: SplitsOnOom,
    forward: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    join: Callable[[Sequence[np.ndarray]], np.ndarray] = np.concatenate,
) -> np.ndarray:
    """`forward(rows)` under `torch.inference_mode`; on out-of-memory the rows are split in
    halves, each forwarded the same way, and their outputs `join`ed (in row order). A single
    row that does not fit raises."""
    import torch

    try:
        with torch.inference_mode():
            return forward(rows)
    except torch.OutOfMemoryError:
        if len(rows) == 1:
            raise
        stage.oom_splits += 1
        stage.token_budget = max(1, stage.token_budget // 2)
        log.warning("out of memory on %d rows; splitting", len(rows))
        if stage.device is not None and stage.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(rows) // 2
        parts = (rows[:half], rows[half:])
        return join([forward_splitting(stage, forward, part, join) for part in parts])


def join_padded(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Per-token outputs (rows x tokens x width) of batches padded to different lengths,
    zero-padded to the longest and stacked."""
    longest = max(part.shape[1] for part in parts)
    return np.concatenate(
        [np.pad(part, ((0, 0), (0, longest - part.shape[1]), (0, 0))) for part in parts]
    )
