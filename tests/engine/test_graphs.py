"""`--cuda-graphs`: batches padded to graph shapes give the padded path's outputs; the options
it cannot run with are refused. The capture and replay themselves run in the GPU test below."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bertetl.config import EngineConfig
from bertetl.engine import encoders, graphs
from bertetl.engine.batching import GRAPH_WIDTH_STEP
from bertetl.errors import ModelError
from bertetl.runs.enrich import enrich
from tests.reference import cosine


def _on_the_cpu(monkeypatch: pytest.MonkeyPatch, stand_in: type[EagerShapes]) -> list[Any]:
    """`--cuda-graphs` runs here with `stand_in` for the graphs: the device check lets the
    CPU through (its own test is below), and the instances made are listed."""
    real = encoders.runtime_device
    monkeypatch.setattr(
        encoders, "runtime_device", lambda runtime: real(replace(runtime, cuda_graphs=False))
    )
    made: list[Any] = []
    monkeypatch.setattr(graphs, "CudaGraphs", lambda *a: made.append(stand_in(*a)) or made[-1])
    return made


class EagerShapes:
    """Stands in for `CudaGraphs` on the CPU: runs the forward pass eagerly on the padded
    shapes the graphs would be captured with, and notes them."""

    def __init__(self, forward: Any, device: Any) -> None:
        self.forward = forward
        self.shapes: list[tuple[int, int]] = []
        self.real_rows: list[int] = []

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        self.shapes.append(tuple(input_ids.shape))
        self.real_rows.append(int((attention_mask.sum(dim=1) > 1).sum()))
        return self.forward(input_ids, attention_mask)


def _texts() -> list[str]:
    words = "the film was great but the plot was thin and slow".split()
    return [" ".join(words[: 1 + i % 11] * (1 + i % 7)) for i in range(300)] + ["", "ok"]


@pytest.mark.parametrize("model", ["embed", "classify"])
def test_graph_shaped_batches_give_the_padded_paths_outputs(
    model: str, tiny_embed_dir: Path, tiny_classifier_dir: Path, write_table, tmp_path, monkeypatch
) -> None:
    src = write_table({"id": list(range(302)), "text": _texts()})
    option = (
        {"embed_model": str(tiny_embed_dir)}
        if model == "embed"
        else {"classify_model": str(tiny_classifier_dir), "include_scores": True}
    )
    config = EngineConfig(text_column="text", batch_tokens=1024, **option)
    plain = enrich(src, tmp_path / "plain", config)
    made = _on_the_cpu(monkeypatch, EagerShapes)
    shaped = enrich(src, tmp_path / "graphs", config.model_copy(update={"cuda_graphs": True}))

    shapes = made[0].shapes
    assert all(w % GRAPH_WIDTH_STEP == 0 and h * w <= 1024 for h, w in shapes)
    filled = zip(shapes, made[0].real_rows, strict=True)
    assert any(h & (h - 1) == 0 and h > rows for (h, _), rows in filled)  # filler rows added
    a = pq.read_table(tmp_path / "plain" / src.name)
    b = pq.read_table(tmp_path / "graphs" / src.name)
    assert b.select(["id", "text"]).equals(a.select(["id", "text"]))
    if model == "embed":
        x, y = (np.array(t.column("embedding").to_pylist()[:-2]) for t in (a, b))
        assert cosine(x, y).min() >= 0.9999
        assert b.column("embedding")[-2].as_py() is None  # the empty text stays empty
    else:
        assert b.column("label").to_pylist() == a.column("label").to_pylist()
        np.testing.assert_allclose(
            np.array(b.column("scores").to_pylist()[:-2]),
            np.array(a.column("scores").to_pylist()[:-2]),
            atol=1e-5,
        )
    name = "embed" if model == "embed" else "classify"
    p, s = plain.stages[name], shaped.stages[name]
    assert s.real_tokens == p.real_tokens  # filler rows and widths are padding, not text
    assert s.padded_tokens > p.padded_tokens


def test_out_of_memory_with_graphs_splits_into_smaller_shapes(
    tiny_embed_dir: Path, write_table, tmp_path, monkeypatch
) -> None:
    """An out-of-memory batch is split as on the eager path; its halves get their own
    (smaller) graph shapes, and the outputs stay the padded path's."""
    src = write_table({"id": list(range(302)), "text": _texts()})
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), batch_tokens=1024)
    enrich(src, tmp_path / "plain", config)

    class RunsOutOfMemory(EagerShapes):
        def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
            if input_ids.shape[0] > 8:
                raise torch.OutOfMemoryError("simulated CUDA out of memory")
            return super().__call__(input_ids, attention_mask)

    made = _on_the_cpu(monkeypatch, RunsOutOfMemory)
    report = enrich(src, tmp_path / "split", config.model_copy(update={"cuda_graphs": True}))
    assert report.oom_splits > 0
    assert all(h <= 8 and h * w <= 1024 for h, w in made[0].shapes)
    x, y = (
        np.array(pq.read_table(tmp_path / name / src.name).column("embedding").to_pylist()[:-2])
        for name in ("plain", "split")
    )
    assert cosine(x, y).min() >= 0.9999


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_graphs_without_a_gpu_is_a_clear_error(
    tiny_embed_dir: Path, write_table, tmp_path
) -> None:
    src = write_table({"text": ["a b c"]})
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), cuda_graphs=True)
    with pytest.raises(ModelError, match="--cuda-graphs needs a CUDA device"):
        enrich(src, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()  # refused before DEST is made


@pytest.mark.parametrize(
    "options,named",
    [
        ({"unpadded": True}, "--unpadded"),
        ({"compile": True}, "--compile"),
        ({"quantize": "int8"}, "--quantize int8"),
        ({"device": "cpu"}, "--device cpu"),
        ({"backend": "onnx"}, "--cuda-graphs"),
    ],
)
def test_options_cuda_graphs_cannot_run_with_are_refused(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        EngineConfig(text_column="text", embed_model="minilm", cuda_graphs=True, **options)


def test_cuda_graphs_with_unpadded_is_one_line_before_dest_is_touched(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    from tests.cli.test_cli import bertetl

    src = write_table({"text": ["a b c"]})
    dest = tmp_path / "out"
    args = ["--text-column", "text", "--embed-model", str(tiny_embed_dir)]
    run = bertetl("enrich", str(src), str(dest), *args, "--cuda-graphs", "--unpadded")
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert "--cuda-graphs replays the padded torch path on a GPU: drop --unpadded" in line
    assert not dest.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model", ["embed", "classify"])
def test_replayed_graphs_match_the_eager_path_on_cuda(
    model: str,
    dtype: str,
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
    write_table,
    tmp_path,
    monkeypatch,
) -> None:
    """On CUDA: replayed graphs against eager forward passes, with shapes replayed on other
    batches' data after their capture (several windows), in fp32 and in bf16 (the GPU's
    default, where the masked attention kernel may differ from an unmasked eager one)."""
    src = write_table({"id": list(range(302)), "text": _texts()})
    option = (
        {"embed_model": str(tiny_embed_dir)}
        if model == "embed"
        else {"classify_model": str(tiny_classifier_dir), "include_scores": True}
    )
    config = EngineConfig(
        text_column="text", device="cuda", dtype=dtype, batch_tokens=1024, **option
    )
    enrich(src, tmp_path / "eager", config)
    made: list[Any] = []
    real = graphs.CudaGraphs
    monkeypatch.setattr(graphs, "CudaGraphs", lambda *a: made.append(real(*a)) or made[-1])
    replayed = config.model_copy(update={"cuda_graphs": True, "window_rows": 64})
    report = enrich(src, tmp_path / "graphs", replayed)
    assert 0 < made[0].captures < report.stages["embed" if model == "embed" else "classify"].batches
    a = pq.read_table(tmp_path / "eager" / src.name)
    b = pq.read_table(tmp_path / "graphs" / src.name)
    if model == "embed":
        x, y = (np.array(t.column("embedding").to_pylist()[:-2]) for t in (a, b))
        assert cosine(x, y).min() >= (0.9999 if dtype == "float32" else 0.999)
    else:
        scores = [np.array(t.column("scores").to_pylist()[:-2]) for t in (a, b)]
        np.testing.assert_allclose(*scores, atol=1e-4 if dtype == "float32" else 2e-2)
        if dtype == "float32":
            assert b.column("label").to_pylist() == a.column("label").to_pylist()
