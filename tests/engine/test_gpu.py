"""GPU-only checks; skipped cleanly where CUDA is absent."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertetl.config import EngineConfig
from bertetl.runs.enrich import enrich
from tests.reference import cosine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_bf16_path_matches_fp32(write_table, tmp_path) -> None:
    texts = [f"review number {i}: " + "great acting, weak plot. " * (i % 40) for i in range(500)]
    src = write_table({"text": texts})
    base = EngineConfig(text_column="text", embed_model="minilm", device="cuda")
    enrich(src, tmp_path / "fp32", base.model_copy(update={"dtype": "float32"}))
    enrich(src, tmp_path / "bf16", base.model_copy(update={"dtype": "bfloat16"}))
    fp32 = np.array(pq.read_table(tmp_path / "fp32" / src.name).column("embedding").to_pylist())
    bf16 = np.array(pq.read_table(tmp_path / "bf16" / src.name).column("embedding").to_pylist())
    assert cosine(bf16, fp32).min() >= 0.995


def test_auto_uses_cuda_in_reduced_precision(write_table, tmp_path) -> None:
    from bertetl.engine.encoders import resolve_device, resolve_dtype

    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_dtype("auto", device) in (torch.bfloat16, torch.float16)
    src = write_table(pa.table({"text": ["a", "b"]}))
    enrich(src, tmp_path / "out", EngineConfig(text_column="text", embed_model="minilm"))
    assert pq.read_table(tmp_path / "out" / src.name).num_rows == 2
