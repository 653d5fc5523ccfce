"""The engine end to end as a benchmark run: Parquet in, read, tokenize, infer, Parquet out
(shared by the systems and the heads benchmarks)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def engine_e2e_run(
    texts: list[str], pipeline: Any, workdir: Path, tag: str = "", **_: Any
) -> Callable[[], Any]:
    """The engine end to end: Parquet in, read, tokenize, infer, write Parquet out.
    `tag` names the files of a second variant in the same process."""
    from bertetl.io.read import discover

    src = workdir / f"src-{os.getpid()}-{len(texts)}{tag}.parquet"
    pq.write_table(pa.table({"id": np.arange(len(texts)), "text": texts}), src)
    (file,) = discover(src)
    schema = pq.read_schema(src)
    out = workdir / f"out-{os.getpid()}-{len(texts)}{tag}.parquet"
    return lambda: pipeline.run_file(file, out, schema)
