"""The stage protocol (the counters every stage keeps live in `bertetl.results`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import pyarrow as pa

from bertetl.results import StageCounters


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
