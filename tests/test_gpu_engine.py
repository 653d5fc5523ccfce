"""The engine on CUDA against plain CPU forward passes; skipped cleanly without CUDA.

`make gpu-check` runs these (`pytest -m gpu`) on a GPU machine, before its benchmark.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bertetl.config import EngineConfig
from bertetl.engine.model_files import max_length_for, resolve_model_dir
from bertetl.runs.enrich import enrich
from tests.reference import cosine, reference_embeddings, reference_probabilities

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LABELS = ["first", "second", "third"]


def _texts() -> list[str]:
    """Real reviews of every length, two texts past MiniLM's 256-token limit, and repeats."""
    from bertetl.bench.corpus import rotten_tomatoes

    reviews = [t for t in rotten_tomatoes().column("text").to_pylist()[:120] if t and t.strip()]
    return [*reviews, " ".join(reviews[:40]), "long text " * 300, reviews[0], reviews[0]]


@pytest.fixture(scope="module")
def minilm_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM's encoder under a seeded 3-label head: real activations, spread-out logits."""
    from transformers import BertForSequenceClassification

    source = resolve_model_dir("minilm")
    path = tmp_path_factory.mktemp("minilm-classifier")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        source,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        dtype=torch.float32,  # as stored would be float16 from the offline GPU bundle
    )
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    model.save_pretrained(path)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "sentence_bert_config.json",
    ):
        if (source / name).exists():
            shutil.copy(source / name, path / name)
    return path


def test_cuda_fp32_embeddings_match_the_plain_cpu_forward(write_table, tmp_path) -> None:
    texts = _texts()
    src = write_table({"text": texts})
    config = EngineConfig(
        text_column="text",
        embed_model="minilm",
        device="cuda",
        dtype="float32",
        batch_tokens=2048,  # many batches: pinned, non-blocking copies while others run
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    assert out.column("text").to_pylist() == texts  # rows in order
    got = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    model_dir = resolve_model_dir("minilm")
    want = reference_embeddings(model_dir, texts, max_length_for(model_dir, None))
    assert cosine(got, want).min() >= 0.9999


def test_cuda_bf16_labels_match_the_fp32_cpu_forward(
    minilm_classifier: Path, write_table, tmp_path
) -> None:
    texts = _texts()
    src = write_table({"text": texts})
    config = EngineConfig(
        text_column="text",
        classify_model=str(minilm_classifier),
        device="cuda",
        dtype="bfloat16",
        include_scores=True,
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    want = reference_probabilities(
        minilm_classifier, texts, max_length_for(minilm_classifier, None)
    )
    got = np.array(out.column("scores").to_pylist(), dtype=np.float32)
    assert np.abs(got - want).max() <= 0.02
    ranked = np.sort(want, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] >= 0.02  # far from a tie at bf16's precision
    assert clear.mean() >= 0.9
    labels = np.array(out.column("label").to_pylist())
    assert (labels[clear] == np.array(LABELS)[want.argmax(axis=1)][clear]).all()


def test_a_cuda_run_gives_its_gpu_memory_back(write_table, tmp_path) -> None:
    src = write_table({"text": _texts()})
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    config = EngineConfig(text_column="text", embed_model="minilm", device="cuda")
    report = enrich(src, tmp_path / "out", config)
    torch.cuda.synchronize()
    assert report.rows == len(_texts()) and report.oom_splits == 0
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize(
    "variant",
    [{"unpadded": True}, {"compile": True}, {"unpadded": True, "compile": True}],
    ids=["unpadded", "compiled", "unpadded-compiled"],
)
def test_cuda_variants_match_the_plain_cpu_forward(
    variant: dict, minilm_classifier: Path, write_table, tmp_path
) -> None:
    """The unpadded (varlen) and compiled paths on CUDA, fp32: the same embeddings and labels
    as plain transformers on the CPU."""
    texts = _texts()
    src = write_table({"text": texts})
    config = EngineConfig(
        text_column="text",
        embed_model="minilm",
        classify_model=str(minilm_classifier),
        device="cuda",
        dtype="float32",
        include_scores=True,
        batch_tokens=2048,
        **variant,
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    model_dir = resolve_model_dir("minilm")
    want = reference_embeddings(model_dir, texts, max_length_for(model_dir, None))
    got = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    assert cosine(got, want).min() >= 0.9999
    probabilities = reference_probabilities(
        minilm_classifier, texts, max_length_for(minilm_classifier, None)
    )
    scores = np.array(out.column("scores").to_pylist(), dtype=np.float32)
    assert np.abs(scores - probabilities).max() <= 1e-4
    assert out.column("label").to_pylist() == list(np.array(LABELS)[probabilities.argmax(1)])
