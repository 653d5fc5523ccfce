from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bertetl.config import EngineConfig
from bertetl.engine.embed import EmbedStage
from bertetl.engine.encoders import pool, resolve_device, resolve_dtype
from bertetl.engine.model_files import PoolingSpec
from bertetl.errors import ModelError
from bertetl.runs.enrich import enrich


def test_pooling_modes_by_hand() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, PoolingSpec("mean")).tolist() == [[2.0, 2.0]]
    assert pool(hidden, mask, PoolingSpec("cls")).tolist() == [[1.0, 0.0]]
    assert pool(hidden, mask, PoolingSpec("max")).tolist() == [[3.0, 4.0]]
    sqrt = pool(hidden, mask, PoolingSpec("mean_sqrt_len"))
    assert torch.allclose(sqrt, torch.tensor([[4.0, 4.0]]) / 2**0.5)
    normalized = pool(hidden, mask, PoolingSpec("mean", normalize=True))
    assert torch.allclose(normalized, torch.tensor([[2**-0.5, 2**-0.5]]))


def test_auto_device_and_dtype_on_this_machine() -> None:
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        assert resolve_dtype("auto", device) == torch.float32
    assert resolve_dtype("bfloat16", device) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="no CUDA device"):
        resolve_device("cuda")


def test_simulated_out_of_memory_splits_batches_with_identical_output(
    tiny_embed_dir: Path, write_table, tmp_path: Path, text_table, monkeypatch
) -> None:
    src = write_table(text_table)
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), batch_tokens=4096)
    enrich(src, tmp_path / "clean", config)

    real_forward = EmbedStage._forward

    def forward_that_runs_out_of_memory(self, input_ids, attention_mask):
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return real_forward(self, input_ids, attention_mask)

    monkeypatch.setattr(EmbedStage, "_forward", forward_that_runs_out_of_memory)
    report = enrich(src, tmp_path / "oom", config)
    assert report.oom_splits > 0
    clean = pq.read_table(tmp_path / "clean" / src.name)
    split = pq.read_table(tmp_path / "oom" / src.name)
    np.testing.assert_allclose(
        np.array(split.column("embedding").to_pylist()),
        np.array(clean.column("embedding").to_pylist()),
        atol=1e-5,
    )
    assert split.drop_columns(["embedding"]).equals(clean.drop_columns(["embedding"]))


def test_base_model_as_classifier_is_refused(tiny_embed_dir: Path, write_table, tmp_path) -> None:
    src = write_table({"text": ["a"]})
    with pytest.raises(ModelError, match="not a sequence-classification model"):
        enrich(
            src,
            tmp_path / "out",
            EngineConfig(text_column="text", classify_model=str(tiny_embed_dir)),
        )


def test_int8_quantization_stays_close_to_fp32(write_table, tmp_path) -> None:
    texts = [
        "A gripping, beautifully shot thriller.",
        "Dull and far too long; the jokes land with a thud.",
        "The cast is great but the script lets them down in the final act.",
        "tickets: login fails with error 500 after password reset",
    ]
    src = write_table({"text": texts})
    base = EngineConfig(text_column="text", embed_model="minilm", device="cpu")
    enrich(src, tmp_path / "fp32", base)
    enrich(src, tmp_path / "int8", base.model_copy(update={"quantize": "int8"}))
    fp32 = np.array(pq.read_table(tmp_path / "fp32" / src.name).column("embedding").to_pylist())
    int8 = np.array(pq.read_table(tmp_path / "int8" / src.name).column("embedding").to_pylist())
    cosine = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cosine.min() >= 0.95
    assert not np.allclose(fp32, int8, atol=1e-4), "quantization changed nothing"
