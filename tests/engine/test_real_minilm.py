"""The packaged all-MiniLM-L6-v2, end to end, against independent references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.engine.model_files import resolve_model_dir
from bertetl.runs.enrich import enrich
from tests.reference import cosine, reference_embeddings

TEXTS = [
    "A gripping, beautifully shot thriller that never lets go.",
    "Dull.",
    "The plot meanders for two hours and the jokes land with a thud; " * 30,
    "这部电影的画面很美，但是故事情节有些拖沓。",  # noqa: RUF001 (real Chinese punctuation)
    "Ça m'a plu, même si la fin était prévisible. 🙂",
    "tickets: login fails with error 500 after password reset (v2.3.1)",
]


@pytest.fixture(scope="module")
def minilm_output(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    root = tmp_path_factory.mktemp("minilm")
    src = root / "src.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), src)
    config = EngineConfig(text_column="text", embed_model="minilm", device="cpu", batch_tokens=512)
    enrich(src, root / "out.parquet", config)
    return pq.read_table(root / "out.parquet")


def test_minilm_matches_hand_pooled_transformers(minilm_output: pa.Table) -> None:
    engine = np.array(minilm_output.column("embedding").to_pylist(), dtype=np.float32)
    expected = reference_embeddings(resolve_model_dir("minilm"), TEXTS, max_length=256)
    assert engine.shape == (len(TEXTS), 384)
    assert cosine(engine, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(engine, axis=1), 1.0, atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm_output: pa.Table) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(resolve_model_dir("minilm")), device="cpu")
    expected = model.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    engine = np.array(minilm_output.column("embedding").to_pylist(), dtype=np.float32)
    assert cosine(engine, expected).min() >= 0.999


def test_minilm_keeps_rows_and_columns(minilm_output: pa.Table) -> None:
    assert minilm_output.column("id").to_pylist() == list(range(len(TEXTS)))
    assert minilm_output.column("text").to_pylist() == TEXTS
    assert minilm_output.column("enrich_error").null_count == len(TEXTS)


def test_minilm_dir_has_what_the_engine_reads() -> None:
    path: Path = resolve_model_dir("minilm")
    assert (path / "modules.json").is_file() and (path / "1_Pooling" / "config.json").is_file()
