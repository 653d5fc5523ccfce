"""The stage protocol and the small counters every stage keeps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import pyarrow as pa


@dataclass
class StageCounters:
    """Per-stage figures that reports and flows publish."""

    rows: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: StageCounters) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def padding_waste(self) -> float:
        """Share of computed token positions that were padding."""
        if not self.padded_tokens:
            return 0.0
        return 1.0 - self.real_tokens / self.padded_tokens


@runtime_checkable
class Stage(Protocol):
    """A pipeline stage: record batches in, record batches out, in the same row order.

    `requires` names the input columns it reads; `produces` the columns it appends.
    Stateful stages load in `setup()` and free resources in `teardown()`.
    """

    name: str
    counters: StageCounters

    @property
    def requires(self) -> tuple[str, ...]: ...

    @property
    def produces(self) -> tuple[str, ...]: ...

    def setup(self) -> None: ...

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]: ...

    def teardown(self) -> None: ...
