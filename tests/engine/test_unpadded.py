"""The unpadded path (`--unpadded`) against the padded one: packing, pooling, whole runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertetl.config import EngineConfig
from bertetl.engine.batching import pack_batch, pad_batch
from bertetl.engine.encoders import pool
from bertetl.engine.model_files import PoolingSpec
from bertetl.engine.unpadded import attend_jagged, attend_repadded, pool_packed
from bertetl.errors import ModelError
from bertetl.runs.enrich import enrich
from tests.reference import cosine

LONG = " ".join(f"word{i % 17} and more" for i in range(60))


def _flat(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return offsets, np.array([i for r in rows for i in r], dtype=np.int32)


def test_pack_batch_holds_exactly_the_padded_batchs_real_tokens() -> None:
    offsets, values = _flat([[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]])
    rows = np.array([3, 0, 2])
    ids, positions, starts = pack_batch(offsets, values, rows)
    assert ids.tolist() == [[7, 8, 9, 10, 1, 2, 3, 5, 6]]
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]
    assert starts.tolist() == [0, 4, 7, 9]
    padded, mask = pad_batch(offsets, values, rows, pad_id=0)
    assert ids[0].tolist() == padded[mask.astype(bool)].tolist()
    assert ids.dtype == positions.dtype == starts.dtype == np.int64


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len"])
@pytest.mark.parametrize("normalize", [False, True])
def test_packed_pooling_equals_padded_pooling(mode: str, normalize: bool) -> None:
    torch.manual_seed(0)
    lengths = [3, 1, 5]
    padded = torch.randn(len(lengths), max(lengths), 4)
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    packed = padded[mask.bool()]  # the real tokens, row after row
    starts = torch.tensor([0, 3, 4, 9])
    spec = PoolingSpec(mode, normalize=normalize)
    assert torch.allclose(pool_packed(packed, starts, spec), pool(padded, mask, spec), atol=1e-6)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_both_attention_kernels_equal_attention_text_by_text() -> None:
    """`attend_jagged` (the CUDA path, run here on the CPU) and `attend_repadded` (the CPU
    path) against one plain SDPA call per text."""
    torch.manual_seed(0)
    lengths = [5, 1, 12, 7]
    offsets = torch.tensor([0, *np.cumsum(lengths)])
    q, k, v = (torch.randn(sum(lengths), 3, 8) for _ in range(3))
    want = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                *(x[a:b].transpose(0, 1) for x in (q, k, v)), scale=0.3
            ).transpose(0, 1)
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        ]
    )
    assert torch.allclose(attend_jagged(q, k, v, offsets, 0.3), want, atol=1e-6)
    assert torch.allclose(attend_repadded(q, k, v, offsets, max(lengths), 0.3), want, atol=1e-6)


def _texts(n: int = 40) -> pa.Table:
    rng = np.random.default_rng(3)
    words = ["film", "great", "bad", "plot", "actor", "the", "was", "slow", "fun", "cast"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]
    texts[5] = ""
    texts[7] = None
    texts[11] = LONG
    return pa.table({"id": range(n), "text": texts})


def _run(src: Path, out: Path, **options) -> pa.Table:
    enrich(src, out, EngineConfig(text_column="text", batch_tokens=256, **options))
    return pq.read_table(out / src.name)


def _assert_same_embeddings(padded: pa.Table, unpadded: pa.Table, column: str) -> None:
    a, b = padded.column(column), unpadded.column(column)
    assert a.is_null().to_pylist() == b.is_null().to_pylist()
    valid = np.array(a.is_valid())
    x = np.stack(a.to_numpy(zero_copy_only=False)[valid])
    y = np.stack(b.to_numpy(zero_copy_only=False)[valid])
    assert cosine(x, y).min() >= 0.9999


@pytest.mark.parametrize("long_text", ["truncate", "window"])
def test_unpadded_embeddings_and_labels_match_the_padded_run(
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
    tiny_multilabel_dir: Path,
    write_table,
    tmp_path: Path,
    long_text: str,
) -> None:
    src = write_table(_texts())
    options = dict(
        embed_model=str(tiny_embed_dir),
        classify=[f"mood={tiny_classifier_dir}", f"topic={tiny_multilabel_dir}"],
        include_scores=True,
        long_text=long_text,
    )
    padded = _run(src, tmp_path / "padded", **options)
    unpadded = _run(src, tmp_path / "unpadded", unpadded=True, **options)
    assert unpadded.column_names == padded.column_names
    assert unpadded.select(["id", "text"]).equals(padded.select(["id", "text"]))
    _assert_same_embeddings(padded, unpadded, "embedding")
    for column in ("mood_label", "topic_labels"):
        assert unpadded.column(column).to_pylist() == padded.column(column).to_pylist()
    for column in ("mood_scores", "topic_scores"):
        a, b = padded.column(column), unpadded.column(column)
        assert a.is_null().to_pylist() == b.is_null().to_pylist()
        valid = np.array(a.is_valid())
        np.testing.assert_allclose(_matrix(b, valid), _matrix(a, valid), atol=1e-5)


def _matrix(column: pa.ChunkedArray, valid: np.ndarray) -> np.ndarray:
    rows = [row for row, keep in zip(column.to_pylist(), valid, strict=True) if keep]
    return np.array([list(row.values()) if isinstance(row, dict) else row for row in rows])


def test_unpadded_zero_shot_labels_match_the_padded_run(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """Label descriptions go through the same packed passes as the rows."""
    src = write_table(_texts())
    options = dict(embed_model=str(tiny_embed_dir), zero_shot=["film,plot,actor"])
    padded = _run(src, tmp_path / "padded", **options)
    unpadded = _run(src, tmp_path / "unpadded", unpadded=True, **options)
    assert unpadded.column("label").to_pylist() == padded.column("label").to_pylist()
    np.testing.assert_allclose(
        np.array(unpadded.column("score").to_pylist(), dtype=float),
        np.array(padded.column("score").to_pylist(), dtype=float),
        atol=1e-5,
    )


def test_unpadded_counts_no_padding(tiny_embed_dir: Path, write_table, tmp_path: Path) -> None:
    src = write_table(_texts())
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), batch_tokens=256)
    padded = enrich(src, tmp_path / "padded", config)
    unpadded = enrich(src, tmp_path / "unpadded", config.model_copy(update={"unpadded": True}))
    p, u = padded.stages["embed"], unpadded.stages["embed"]
    assert u.real_tokens == u.padded_tokens == p.real_tokens < p.padded_tokens


def test_unpadded_refuses_a_model_it_is_not_exact_for(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    model_dir = tmp_path / "distilbert"
    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_dir)
    tokenizer.save_pretrained(model_dir)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=16, n_layers=1, n_heads=2)
    DistilBertModel(config).save_pretrained(model_dir)
    src = write_table({"text": ["a"]})
    engine = EngineConfig(text_column="text", embed_model=str(model_dir), unpadded=True)
    with pytest.raises(ModelError, match=r"--unpadded supports BERT.*'distilbert'"):
        enrich(src, tmp_path / "out", engine)
    # the padded path runs it, with the width from its config's own name for it (`dim`)
    enrich(src, tmp_path / "padded", engine.model_copy(update={"unpadded": False}))
    assert (
        pq.read_table(tmp_path / "padded" / src.name).schema.field("embedding").type.list_size == 16
    )


def test_real_minilm_unpadded_matches_plain_transformers(write_table, tmp_path: Path) -> None:
    """Real reviews of every length (one past the 256-token limit) through the real MiniLM,
    unpadded, against transformers' own padded forward and sentence-transformers' pooling."""
    from bertetl.bench.corpus import rotten_tomatoes
    from bertetl.engine.model_files import max_length_for, resolve_model_dir
    from tests.reference import reference_embeddings

    reviews = [t for t in rotten_tomatoes().column("text").to_pylist()[:40] if t and t.strip()]
    texts = [*reviews, " ".join(reviews[:30])]
    src = write_table({"text": texts})
    config = EngineConfig(
        text_column="text", embed_model="minilm", unpadded=True, batch_tokens=1024
    )
    enrich(src, tmp_path / "out", config)
    got = np.array(pq.read_table(tmp_path / "out" / src.name).column("embedding").to_pylist())
    model_dir = resolve_model_dir("minilm")
    want = reference_embeddings(model_dir, texts, max_length_for(model_dir, None))
    assert cosine(got.astype(np.float32), want).min() >= 0.9999


@pytest.mark.slow
def test_compiled_path_matches_the_eager_one(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, write_table, tmp_path: Path, monkeypatch
) -> None:
    """`--compile` through dynamo's graph capture with dynamic shapes: an embedding model
    padded, a classifier (whose encoder is compiled in place) unpadded. On the CPU the
    compiler backend is swapped for `aot_eager` (the same captured graphs, no C++ build,
    which costs half a minute here); the GPU check runs the real one."""
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager", **kw)
    )
    torch._dynamo.reset()
    src = write_table(_texts(12))
    for unpadded, options in (
        (False, dict(embed_model=str(tiny_embed_dir))),
        (True, dict(classify_model=str(tiny_classifier_dir), include_scores=True)),
    ):
        eager = _run(src, tmp_path / f"eager-{unpadded}", unpadded=unpadded, **options)
        compiled = _run(
            src, tmp_path / f"compiled-{unpadded}", compile=True, unpadded=unpadded, **options
        )
        assert compiled.column_names == eager.column_names
        for column in eager.column_names:
            if column == "embedding":
                _assert_same_embeddings(eager, compiled, column)
            elif column == "scores":
                valid = np.array(eager.column(column).is_valid())
                np.testing.assert_allclose(
                    _matrix(compiled.column(column), valid),
                    _matrix(eager.column(column), valid),
                    atol=1e-5,
                )
            elif column != "score":
                assert compiled.column(column).equals(eager.column(column)), column


@pytest.mark.parametrize("option", ["--unpadded", "--compile"])
def test_onnx_with_unpadded_or_compile_is_one_line_before_dest_is_touched(
    option: str, tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    from tests.cli.test_cli import bertetl

    src = write_table(_texts())
    dest = tmp_path / "out"
    args = ["--text-column", "text", "--embed-model", str(tiny_embed_dir), "--backend", "onnx"]
    run = bertetl("enrich", str(src), str(dest), *args, option)
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert "--backend onnx runs the padded, uncompiled path" in line
    assert not dest.exists()
