from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bertetl.bench.corpus import length_mix
from bertetl.bench.systems import BenchConfig, format_table, forward_flops, run_bench


def test_forward_flops_counts_matmuls_and_attention() -> None:
    config = SimpleNamespace(num_hidden_layers=2, hidden_size=8)
    lengths = np.array([3, 5])
    assert forward_flops(config, lengths, non_embedding_params=100) == (
        2 * 100 * 8 + 4 * 2 * 8 * (9 + 25)
    )


def test_length_mix_has_three_length_classes() -> None:
    texts = length_mix(30, ["a", "b", "c"], seed=1)
    words = sorted(len(t.split()) for t in texts)
    assert len(texts) == 30
    assert words[0] >= 5 and words[9] <= 15 and 50 <= words[10] <= 120 and words[-1] >= 550


@pytest.mark.slow
def test_bench_runs_systems_in_one_report(tiny_embed_dir: Path, tmp_path: Path) -> None:
    config = BenchConfig(
        models=[str(tiny_embed_dir)],
        inputs=["reviews"],
        rows=40,
        repeats=2,
        systems=["sentence-transformers", "engine-model", "engine-e2e"],
        device="cpu",
        workdir=str(tmp_path),
        isolate=False,  # `bertetl bench` isolates each system; the figures here need not
    )
    report = run_bench(config)
    assert report["errors"] == []
    by_system = {r["system"]: r for r in report["results"]}
    assert set(by_system) == {"sentence-transformers", "engine-model", "engine-e2e"}
    e2e = by_system["engine-e2e"]
    assert e2e["rows"] == 40 and len(e2e["seconds"]) == 2
    assert e2e["real_tokens"] == by_system["engine-model"]["real_tokens"] > 40
    assert e2e["x_sentence-transformers"] > 0 and 0 <= e2e["padding_waste"] < 1
    assert e2e["share_of_model_only"] > 0
    assert "engine-e2e" in format_table(report)


@pytest.mark.slow
def test_bench_classifier_against_the_text_classification_pipeline(
    tiny_classifier_dir: Path, tmp_path: Path
) -> None:
    config = BenchConfig(
        models=[f"classify:{tiny_classifier_dir}"],
        inputs=["synthetic"],
        rows=30,
        repeats=1,
        systems=["pipeline", "sentence-transformers", "engine-e2e-int8"],
        device="cpu",
        workdir=str(tmp_path),
    )  # isolated, as `bertetl bench` runs: one test keeps the process path covered
    report = run_bench(config)
    assert report["errors"] == []
    by_system = {r["system"]: r for r in report["results"]}
    assert set(by_system) == {"pipeline", "engine-e2e-int8"}  # no s-t counterpart
    assert 0.0 <= by_system["engine-e2e-int8"]["int8_label_agreement"] <= 1.0
    assert by_system["engine-e2e-int8"]["x_pipeline"] > 0


@pytest.mark.slow  # a spawned end-to-end run
def test_memory_check_runs_with_the_chosen_layer(tmp_path: Path) -> None:
    import json

    from bertetl.bench.memory import memory_check

    result = memory_check([40], workdir=str(tmp_path), layer="minilm")
    [run] = result["memory"]
    assert run["rows"] == 40 and run["peak_rss_mb"] > 100  # torch alone is more
    assert result["layer"] == "minilm"
    config = json.loads((tmp_path / "one-layer-minilm" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (384, 1)


@pytest.mark.slow  # a spawned end-to-end run
def test_memory_check_runs_the_null_model_with_a_ratio_per_size(tmp_path: Path) -> None:
    from bertetl.bench.memory import memory_check

    result = memory_check([40, 80], workdir=str(tmp_path), model="null")
    assert result["model"] == "null" and result["layer"] is None
    first, second = result["memory"]
    assert (first["rows"], second["rows"]) == (40, 80) and first["vs_first"] == 1.0
    assert second["vs_first"] == round(second["peak_rss_mb"] / first["peak_rss_mb"], 3)
    assert not (tmp_path / "one-layer-minilm").exists()  # the real MiniLM's files, nulled


def test_memory_check_refuses_an_unknown_model() -> None:
    from bertetl.bench.memory import memory_check

    with pytest.raises(ValueError, match="one of layer, minilm, null"):
        memory_check([10], model="bert")


def test_memory_model_choices_are_the_bench_models() -> None:
    from typing import get_args

    from bertetl.bench.memory import MEMORY_MODELS
    from bertetl.cli.bench import MemoryModel

    assert get_args(MemoryModel) == MEMORY_MODELS


def test_memory_layer_choices_are_the_bench_layers() -> None:
    from typing import get_args

    from bertetl.bench.memory import MEMORY_LAYERS
    from bertetl.cli.bench import MemoryLayer

    assert get_args(MemoryLayer) == tuple(MEMORY_LAYERS)
