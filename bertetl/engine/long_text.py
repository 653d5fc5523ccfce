"""Long texts: cut each row's content tokens into model-sized token windows, and combine the
windows' outputs back into one output per row.

The rule (`--long-text window`), so anyone can recompute it with plain transformers: a row
has content tokens `t[0:T]` (no special tokens); a window holds `W` of them (the model's max
length minus its special tokens) and starts `S = W - overlap` after the previous one:
`t[k*S : k*S + W]` for k = 0, 1, ... until a window reaches `T`, at most `max_windows`. Each
window is wrapped in the model's special tokens. Truncate mode is the same rule with one
window, so both modes share this code (and rows that fit get the same tokens in both).

"Token window" here is a slice of one row's tokens; a *window of rows* (`--window-rows`) is
the other use of the word, see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from bertetl.schema import SPAN_TYPE

if TYPE_CHECKING:
    from bertetl.config import EngineConfig


@dataclass(frozen=True)
class LongTextOptions:
    """What to do with texts longer than the model's limit, and which stats to keep."""

    long_text: str = "truncate"
    window_overlap: int = 32
    max_windows: int = 64
    token_stats: bool = False

    @classmethod
    def from_config(cls, config: EngineConfig) -> LongTextOptions:
        return cls(config.long_text, config.window_overlap, config.max_windows, config.token_stats)


@dataclass(frozen=True)
class WindowRule:
    """How one tokenizer's rows become token windows."""

    width: int  # W: content tokens per window
    overlap: int = 0
    max_windows: int = 1  # 1 = truncate mode

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"a token window must hold at least one token (width {self.width})")
        if self.max_windows > 1 and not 0 <= self.overlap < self.width:
            raise ValueError(
                f"--window-overlap {self.overlap} must be below the window's {self.width} "
                "content tokens (the model's max length minus its special tokens)"
            )

    @property
    def stride(self) -> int:
        """S: tokens between the starts of consecutive windows."""
        return self.width - self.overlap if self.max_windows > 1 else self.width

    @property
    def limit(self) -> int:
        """Content tokens the model can see at most: `(max_windows - 1) * S + W`."""
        return (self.max_windows - 1) * self.stride + self.width

    def windows(self, tokens: np.ndarray) -> np.ndarray:
        """Windows each row gets for `tokens` content tokens (at least one, at most
        `max_windows`); rows with fewer than `limit` tokens need no cap."""
        tokens = np.asarray(tokens, dtype=np.int64)
        beyond = np.maximum(tokens - self.width, 0)
        needed = 1 + -(-beyond // self.stride)  # 1 + ceil((T - W) / S), for T > W
        return np.minimum(needed, self.max_windows)


def cut_windows(
    content_offsets: np.ndarray,
    content_values: np.ndarray,
    windows: np.ndarray,
    rule: WindowRule,
    head: list[int],
    tail: list[int],
) -> pa.ListArray:
    """Token windows of every row as `list<list<int32>>` (row -> windows -> token ids).

    `content_offsets`/`content_values` hold each row's content tokens (no special tokens, at
    most `rule.limit` of them); `windows[row]` is the row's window count (0 for rows that get
    no output). Each window is `head + t[k*S : k*S + W] + tail`.
    """
    first, starts, ends = _window_bounds(content_offsets, windows, rule)
    rows = np.repeat(np.arange(len(first) - 1), np.diff(first))
    content = np.maximum(ends - starts, 0)
    special = len(head) + len(tail)
    sizes = content + special
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=np.int32)
    if len(rows):
        base = offsets[:-1]
        for i, token in enumerate(head):
            values[base + i] = token
        for i, token in enumerate(tail):
            values[base + len(head) + content + i] = token
        total = int(content.sum())
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(content) - content, content)
        source = np.repeat(starts, content) + within
        target = np.repeat(base + len(head), content) + within
        values[target] = content_values[source]
    inner = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
    return pa.ListArray.from_arrays(pa.array(first.astype(np.int32)), inner)


def _window_bounds(
    content_offsets: np.ndarray, windows: np.ndarray, rule: WindowRule
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's first window (row -> offset into the windows, `len(windows) + 1` of them)
    and each window's content tokens `[start, end)` (positions in the content values)."""
    windows = np.asarray(windows, dtype=np.int64)
    rows = np.repeat(np.arange(len(windows)), windows)
    first = np.zeros(len(windows) + 1, dtype=np.int64)
    np.cumsum(windows, out=first[1:])
    index = np.arange(len(rows), dtype=np.int64) - first[rows]  # k of each window
    starts = content_offsets[rows].astype(np.int64) + index * rule.stride
    ends = np.minimum(starts + rule.width, content_offsets[rows + 1].astype(np.int64))
    return first, starts, ends


def window_spans(
    content_offsets: np.ndarray,
    char_starts: np.ndarray,
    char_ends: np.ndarray,
    windows: np.ndarray,
    rule: WindowRule,
) -> pa.ListArray:
    """Each window's character span in its row's text as `list<struct<char_start,
    char_end>>` (row -> windows), windows cut as `cut_windows` cuts them: from its first
    content token's start to its last one's end (`char_starts`/`char_ends`: each content
    token's, from the tokenizer's offsets, aligned with the content values)."""
    first, starts, ends = _window_bounds(content_offsets, windows, rule)
    last = np.maximum(ends - 1, starts)  # a window holds at least one content token
    spans = pa.StructArray.from_arrays(
        [pa.array(char_starts[starts], pa.int64()), pa.array(char_ends[last], pa.int64())],
        fields=list(SPAN_TYPE),
    )
    return pa.ListArray.from_arrays(pa.array(first.astype(np.int32)), spans)


def combine_windows(outputs: np.ndarray, windows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One output per row from its windows' outputs: the mean weighted by `weights` (each
    window's content tokens). A row with one window keeps its window's output bit for bit;
    a row with none gets zeros (it is masked as missing)."""
    windows = np.asarray(windows, dtype=np.int64)
    result = np.zeros((len(windows), outputs.shape[1]), dtype=np.float32)
    first = np.zeros(len(windows), dtype=np.int64)
    np.cumsum(windows[:-1], out=first[1:])
    single = np.flatnonzero(windows == 1)
    result[single] = outputs[first[single]]
    multi = np.flatnonzero(windows > 1)
    if len(multi):
        rows = np.repeat(multi, windows[multi])
        within = np.arange(len(rows)) - np.repeat(
            np.cumsum(windows[multi]) - windows[multi], windows[multi]
        )
        sequences = first[rows] + within
        weight = weights[sequences].astype(np.float64)
        sums = np.zeros((len(windows), outputs.shape[1]), dtype=np.float64)
        np.add.at(sums, rows, outputs[sequences].astype(np.float64) * weight[:, None])
        totals = np.zeros(len(windows), dtype=np.float64)
        np.add.at(totals, rows, weight)
        result[multi] = (sums[multi] / np.maximum(totals[multi], 1e-12)[:, None]).astype(np.float32)
    return result
