"""The `OutputSink` protocol: how one output file is written, whatever the destination.

A sink has a lifecycle, as Ray Data's `Datasink` and NeMo Curator's writers have: `open()` →
`write(batch)`… → `commit()` (the output appears whole) or `abort()` (nothing of it appears),
with an explicit output schema. A destination hands out the sink for a target
(`Destination.sink`); the engine writes every output through one (`write_output`), and a bench
times writes by giving its own factory instead of patching a class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa


@runtime_checkable
class OutputSink(Protocol):
    """One output with an explicit schema; `rows` counts what `write` took."""

    rows: int

    def open(self) -> Any:
        """Start the output (nothing visible yet); returns the sink."""

    def write(self, batch: pa.RecordBatch) -> None:
        """Add a batch of rows of the output schema."""

    def commit(self) -> None:
        """Make the output visible whole, atomically."""

    def abort(self) -> None:
        """Drop what was written; an earlier version of the output is untouched."""


#: Makes the sink of one target: `(target, schema) -> OutputSink` (`ParquetSink` is one).
SinkFactory = Callable[[str | os.PathLike[str] | Any, pa.Schema], OutputSink]
