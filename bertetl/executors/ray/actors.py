"""Ray Data callable classes around the engine's own stages (no second implementation).

`TokenizeActor` runs `Pipeline.prepare` (validate + tokenize) on CPU actors; `ModelActor`
runs `Pipeline.infer` (the model stages, then `finish`) on an actor pool, one model copy per
actor, loaded once in `__init__`. Each call gets one Arrow table (a window of one input file,
or a slice of one) and returns it with the stage's columns appended; the internal file and
row columns pass through untouched.

A stage that raises records the failure against every input file in the block before
re-raising, so the run names those files instead of failing silently; Ray Data then drops
the block (`max_errored_blocks` is unlimited for these runs) and the sink finds those rows
missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from bertetl.config import EngineConfig
from bertetl.engine.pipeline import Pipeline
from bertetl.engine.tokenize import TokenizerSnapshot
from bertetl.errors import is_transient
from bertetl.executors.ray.datasource import FILE_COLUMN, record_error
from bertetl.io.stores.node_staging import Folder


def _apply(
    table: pa.Table,
    stage: Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]],
    name: str,
    errors_dir: str | Folder,
) -> pa.Table:
    if not table.num_rows:  # nothing to enrich; the sink writes nothing for it
        return table
    try:
        return pa.Table.from_batches(list(stage(iter(table.combine_chunks().to_batches()))))
    except Exception as e:
        files = np.unique(table.column(FILE_COLUMN).to_numpy())
        message = f"{name} stage failed: {type(e).__name__}: {e}"
        for index in files:
            record_error(errors_dir, int(index), message, is_transient(e))
        raise


class TokenizeActor:
    """Validate and tokenize on a CPU actor (its tokenizers built once, here, from the driver's
    snapshots)."""

    def __init__(
        self,
        config: EngineConfig,
        errors_dir: str | Folder,
        counters: Any = None,
        snapshots: Mapping[str, TokenizerSnapshot] | None = None,
    ) -> None:
        self.pipeline = Pipeline(config)
        self.pipeline.setup_tokenizers(snapshots)  # the driver's (torch only for NER heads)
        self.errors_dir = errors_dir
        self.counters = counters

    def __call__(self, table: pa.Table) -> pa.Table:
        out = _apply(table, self.pipeline.prepare, "tokenize", self.errors_dir)
        if self.counters is not None and out.num_rows:
            truncated = truncated_by_file(out, self.pipeline.stats_column)
            if truncated:
                ray.get(self.counters.add_truncated.remote(truncated))  # counted by the end
        return out


def truncated_by_file(table: pa.Table, stats_column: str) -> dict[int, int]:
    """Rows whose text the model will not see whole, by input file index."""
    flags = pc.fill_null(pc.struct_field(table.column(stats_column), "truncated"), False)
    files = table.column(FILE_COLUMN).filter(flags)
    return {int(item["values"]): int(item["counts"]) for item in pc.value_counts(files).to_pylist()}


class ModelActor:
    """The model stages on one actor: a GPU each on GPU nodes, else CPU threads.

    `threads` sets torch's CPU threads; Ray starts actors with OMP_NUM_THREADS=1, which
    would leave a CPU actor on one core.
    """

    def __init__(
        self, config: EngineConfig, errors_dir: str | Folder, threads: int | None = None
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        elif config.device == "cpu" or not torch.cuda.is_available():  # a CPU actor
            torch.set_num_threads(os.cpu_count() or 1)
        self.pipeline = Pipeline(config)
        self.pipeline.setup_models()
        self.errors_dir = errors_dir

    def __call__(self, table: pa.Table) -> pa.Table:
        return _apply(table, self.pipeline.infer, "model", self.errors_dir)
