from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from bertetl.bench.host import (
    CODECS,
    NullForward,
    codec_costs,
    host_bench,
    host_run,
    pinned,
    write_options,
)
from bertetl.bench.systems import BenchConfig, format_table
from bertetl.config import EngineConfig
from bertetl.engine.pipeline import Pipeline
from tests.conftest import TEXTS


def test_null_forward_gives_distinct_unit_vectors_or_probabilities() -> None:
    import torch

    embed = NullForward(width=16, kind="embed")
    first = embed(torch.zeros((3, 5), dtype=torch.int64), None).numpy()
    second = embed(torch.zeros((2, 7), dtype=torch.int64), None).numpy()
    assert first.shape == (3, 16) and second.shape == (2, 16)
    assert np.allclose(np.linalg.norm(np.vstack([first, second]), axis=1), 1.0, atol=1e-5)
    assert len({tuple(row) for row in np.vstack([first, second])}) == 5
    labels = NullForward(width=3, kind="classify")(torch.zeros((4, 2)), None).numpy()
    assert labels.shape == (4, 3) and np.allclose(labels.sum(axis=1), 1.0, atol=1e-5)


def _texts() -> list[str | None]:
    texts: list[str | None] = [TEXTS[i % len(TEXTS)] + f" row {i}" for i in range(90)]
    texts[5], texts[17] = None, "   "
    return texts


def test_host_run_writes_every_row_through_the_real_path(tiny_embed_dir: Path, tmp_path) -> None:
    from transformers import AutoTokenizer

    texts = _texts()
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), device="cpu")
    pipeline = Pipeline(config)
    pipeline.setup()
    run = host_run(texts, pipeline, tmp_path, repeats=2)

    out = pq.read_table(run["output"])
    assert out.column("text").to_pylist() == texts
    assert out.column("id").to_pylist() == list(range(len(texts)))
    errors = out.column("enrich_error").to_pylist()
    assert [i for i, e in enumerate(errors) if e] == [5, 17]
    vectors = out.column("embedding")
    assert vectors.null_count == 2
    valid = np.array([v for v in vectors.to_pylist() if v is not None])
    assert valid.shape == (88, 32) and np.allclose(np.linalg.norm(valid, axis=1), 1, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_dir)
    valid_texts = [t for t in texts if t and t.strip()]
    encoded = tokenizer(valid_texts, truncation=True, max_length=48)["input_ids"]
    assert run["real_tokens"] == sum(len(ids) for ids in encoded)
    assert run["rows"] == len(texts) and len(run["seconds"]) == 2
    assert set(run["stage_seconds"]) == {"read", "validate", "tokenize", "infer", "write"}
    assert all(seconds > 0 for seconds in run["stage_seconds"].values())


def test_codec_costs_cover_every_codec_and_floats_barely_compress(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 64), dtype=np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 64)
    table = pa.table({"id": np.arange(500), "text": ["t"] * 500, "embedding": embedding})
    pq.write_table(table, tmp_path / "out.parquet")

    costs = codec_costs(tmp_path / "out.parquet", embedding[:100], embedding[100:200], repeats=1)
    by_label = {c["compression"]: c for c in costs}
    assert set(by_label) == set(write_options(table, "embedding"))
    assert set(CODECS) <= set(by_label)
    raw = 64 * 4  # random floats: no codec gets far below their raw bytes
    for cost in costs:
        assert cost["embedding_bytes_per_row"] > 0.8 * raw
        assert cost["sample_real_bytes_per_row"] > 0.8 * raw
    plain = pq.ParquetFile(tmp_path / "out.parquet")
    assert plain.metadata.num_rows == 500


def test_bench_config_checks_cores_and_codecs() -> None:
    assert BenchConfig(compression=["lz4", "none"], cores=[1, 2]).cores == [1, 2]
    with pytest.raises(ValidationError, match="codec"):
        BenchConfig(compression=["brotli9"])
    with pytest.raises(ValidationError, match="core"):
        BenchConfig(cores=[0])
    assert BenchConfig(tokenizers=["0", "2"]).tokenizers == [0, 2]
    with pytest.raises(ValidationError, match="pool sizes"):
        BenchConfig(tokenizers=[-1])
    with pytest.raises(ValueError, match="only"):
        pinned(len(os.sched_getaffinity(0)) + 1)
    with pytest.raises(ValidationError, match="may use only"):  # before any model loads
        BenchConfig(cores=[1, len(os.sched_getaffinity(0)) + 1])


@pytest.mark.slow
def test_host_bench_pins_each_core_count_in_its_own_process(
    tiny_embed_dir: Path, tmp_path: Path
) -> None:
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), device="cpu")
    texts = [t for t in _texts() if t]
    runs, codecs, errors = host_bench(
        config,
        texts,
        tmp_path,
        cores=[1],
        repeats=1,
        compressions=["zstd", "none"],
        tokenizers=(0, 1),
    )
    assert errors == []
    assert [(r["cores"], r["compression"], r["tokenizers"]) for r in runs] == [
        (1, "zstd", 0),
        (1, "none", 0),
        (1, "zstd", 1),  # a tokenizer process beside the engine: the first codec only
    ]
    assert all(len(r["cpus"]) == 1 for r in runs)  # the child ran on one CPU
    assert runs[0]["x_first_cores"] == runs[0]["x_first_tokenizers"] == 1.0
    assert runs[0]["tokenizer_rows_per_s"] > 0 and runs[0]["tokenizer_x_first_cores"] == 1.0
    pooled = runs[2]
    assert pooled["real_tokens"] == runs[0]["real_tokens"] > 0  # the same work, tokenized apart
    assert pooled["stage_seconds"]["tokenize"] > 0  # the workers' counters came back
    assert pooled["x_first_tokenizers"] == round(pooled["rows_per_s"] / runs[0]["rows_per_s"], 3)
    assert {c["compression"] for c in codecs} >= set(CODECS)
    rows = [{**r, "system": "host", "model": "tiny", "inputs": "mine"} for r in runs]
    report = {"environment": {"device": "cpu"}, "results": rows, "errors": [], "codecs": codecs}
    assert "host path" in format_table(report) and "byte_stream_split" in format_table(report)
    assert f"{runs[0]['tokenizer_rows_per_s']:,.2f}" in format_table(report)


def test_host_bench_compares_core_counts_and_names_a_failed_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import bertetl.bench.host as host

    rates = {1: (1000.0, 4000.0), 2: (1500.0, 7000.0)}  # host path, tokenizer alone

    def measure(config, texts, workdir, cores, *rest):
        if cores == 3:
            raise RuntimeError("no third core")
        run = {"cores": cores, "compression": "zstd", "tokenizers": 0}
        run["rows_per_s"] = rates[cores][0]
        return {"runs": [run], "peak_rss_mb": 1.0, "affinity": list(range(cores)),
                "tokenizer_rows_per_s": rates[cores][1]}  # fmt: skip

    monkeypatch.setattr(host, "host_measure", measure)
    runs, _, errors = host.host_bench(None, [], tmp_path, [1, 2, 3], 1, ["zstd"], isolate=False)
    assert errors == ["host / 3 cores: RuntimeError: no third core"]
    two = next(r for r in runs if r["cores"] == 2)
    assert (two["x_first_cores"], two["tokenizer_x_first_cores"]) == (1.5, 1.75)
