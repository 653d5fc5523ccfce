"""Each model kind and embedding option equals sentence-transformers' own `encode` (6.x) on
tiny random models built here (`tests/engine/st_models.py`): cosine >= 0.9999 in float32,
and the stored precisions equal `quantize_embeddings`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import ModelError
from bertetl.runs.enrich import enrich
from tests.conftest import TEXTS
from tests.engine import st_models
from tests.reference import cosine


@pytest.fixture(scope="module")
def models(tiny_embed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("st-models")
    return {
        "prompts": st_models.bert_with_prompts(tiny_embed_dir, root / "prompts"),
        "no_prompt_pool": st_models.bert_with_prompts(
            tiny_embed_dir, root / "no-prompt-pool", include_prompt=False
        ),
        "dense": st_models.bert_with_dense(tiny_embed_dir, root / "dense"),
        "qwen3": st_models.qwen3_last_token(root / "qwen3"),
        "modernbert": st_models.modernbert(root / "modernbert"),
    }


def st_encode(model_dir: Path, texts: list[str] = TEXTS, **kwargs: Any) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    return model.encode(texts, convert_to_numpy=True, batch_size=4, **kwargs)


def bertetl_encode(
    model_dir: Path, tmp_path: Path, texts: list[str] = TEXTS, **options: Any
) -> np.ndarray:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    out = tmp_path / "out"
    config = EngineConfig(
        text_column="text", embed_model=str(model_dir), device="cpu", batch_tokens=64, **options
    )
    enrich(src, out, config)
    column = pq.read_table(out).column("embedding").combine_chunks()
    width = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, width)


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    assert cosine(ours, theirs).min() >= 0.9999


@pytest.mark.parametrize(
    ("options", "st_options"),
    [
        ({}, {}),  # the model's default_prompt_name ('query') applies
        ({"prompt_name": "passage"}, {"prompt_name": "passage"}),
        ({"prompt": "instruct: rate this "}, {"prompt": "instruct: rate this "}),
    ],
)
def test_prompts_as_sentence_transformers(
    models: dict[str, Path], tmp_path: Path, options: dict, st_options: dict
) -> None:
    ours = bertetl_encode(models["prompts"], tmp_path, **options)
    assert_same(ours, st_encode(models["prompts"], **st_options))
    without = st_encode(models["prompts"], prompt="")
    assert cosine(ours, without).min() < 0.9999  # the prompt did change the vectors


def test_pooling_without_the_prompt(models: dict[str, Path], tmp_path: Path) -> None:
    ours = bertetl_encode(models["no_prompt_pool"], tmp_path, prompt_name="passage")
    assert_same(ours, st_encode(models["no_prompt_pool"], prompt_name="passage"))


@pytest.mark.parametrize("kind", ["dense", "qwen3", "modernbert"])
def test_architectures_and_modules(models: dict[str, Path], tmp_path: Path, kind: str) -> None:
    assert_same(bertetl_encode(models[kind], tmp_path), st_encode(models[kind]))


def test_decoder_with_its_instruction_prompt(models: dict[str, Path], tmp_path: Path) -> None:
    ours = bertetl_encode(models["qwen3"], tmp_path, prompt_name="query")
    assert_same(ours, st_encode(models["qwen3"], prompt_name="query"))


def test_matryoshka_dims(models: dict[str, Path], tmp_path: Path) -> None:
    ours = bertetl_encode(models["qwen3"], tmp_path, embed_dim=8)
    theirs = st_encode(models["qwen3"], truncate_dim=8, normalize_embeddings=True)
    assert_same(ours, theirs)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ModelError, match=r"--embed-dim 64 is above .* 32 dimensions"):
        bertetl_encode(models["qwen3"], tmp_path / "too-wide", embed_dim=64)


@pytest.mark.parametrize("precision", ["float16", "int8", "uint8", "binary", "ubinary"])
def test_precisions_equal_quantize_embeddings(
    tiny_embed_dir: Path, tmp_path: Path, precision: str
) -> None:
    from sentence_transformers.quantization import quantize_embeddings

    floats = bertetl_encode(tiny_embed_dir, tmp_path / "f32")
    stored = bertetl_encode(tiny_embed_dir, tmp_path / precision, embed_precision=precision)
    if precision == "float16":
        np.testing.assert_array_equal(stored, floats.astype(np.float16))
        return
    expected = quantize_embeddings(floats, precision=precision)  # ranges: these rows'
    assert stored.dtype == expected.dtype
    assert stored.shape == expected.shape
    # float rounding may move a value across a bucket edge: at most one step, rarely
    difference = np.abs(stored.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99


def test_refusals_are_one_line(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        EngineConfig(text_column="t", embed_model="m", prompt="a", prompt_name="b")
    with pytest.raises(ValueError, match="--long-text window is not supported"):
        EngineConfig(text_column="t", embed_model="m", prompt="a", long_text="window")
    with pytest.raises(ValueError, match="need\\(s\\) --embed-model"):
        EngineConfig(text_column="t", classify_model="m", embed_dim=8)
    with pytest.raises(ModelError, match=r"no prompt named 'nope'.*query"):
        bertetl_encode(models["prompts"], tmp_path / "a", prompt_name="nope")
    with pytest.raises(ModelError, match=r"default_prompt_name.*--long-text window"):
        bertetl_encode(models["prompts"], tmp_path / "b", long_text="window")


@pytest.mark.parametrize("kind", ["qwen3", "modernbert", "dense", "no_prompt_pool"])
def test_onnx_backend_runs_them_too(
    models: dict[str, Path], tmp_path: Path, monkeypatch, kind: str
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("BERTETL_CACHE", str(tmp_path / "cache"))
    options = {"prompt_name": "passage"} if kind == "no_prompt_pool" else {}
    ours = bertetl_encode(models[kind], tmp_path, backend="onnx", **options)
    assert_same(ours, st_encode(models[kind], **options))


def test_unpadded_refuses_what_it_cannot_pool(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"--unpadded pools by mean.*without its prompt"):
        bertetl_encode(models["no_prompt_pool"], tmp_path, unpadded=True)


def test_int8_is_calibrated_by_one_model_process(tiny_embed_dir: Path, tmp_path: Path) -> None:
    from bertetl.executors.local import LocalExecutor

    config = EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), embed_precision="int8", workers=2
    )
    with pytest.raises(ModelError, match="2 workers would each calibrate their own"):
        LocalExecutor(config)
