"""`bertetl bench memory`: peak RSS of end-to-end runs against the size of the table.

Each run is `enrich` over the real reviews cycled to a row count, in a fresh process, with
default settings (`EngineConfig` with only the text column and the model), and one of
`MEMORY_MODELS`: a one-layer random model (`MEMORY_LAYERS`), so the figure is what the engine
holds for a table of that size rather than what a model weighs; the real MiniLM, as a user
runs it; or the real MiniLM with its forward pass nulled (`bench.host.NullForward`), the
host path at the speed a GPU would feed it. Peak RSS must not depend on the run's speed:
run it under `taskset -c 0` to slow it (each child inherits the affinity).
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bertetl.bench.child import run_in_child

#: One-layer random BERTs for `tiny_model`: a 32-wide toy (what the engine holds, not the
#: model), or one layer of all-MiniLM-L6-v2's width (its activations, allocated as MiniLM's are).
MEMORY_LAYERS = {
    "toy": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    "minilm": {"hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536},
}


def tiny_model(workdir: Path, layer: str = "toy") -> Path:
    """A 1-layer random BERT (`MEMORY_LAYERS[layer]`) with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from bertetl.engine.model_files import resolve_model_dir

    path = workdir / ("tiny" if layer == "toy" else f"one-layer-{layer}")
    if not (path / "config.json").is_file():
        minilm = resolve_model_dir("minilm")
        torch.manual_seed(0)
        config = BertConfig(num_hidden_layers=1, **MEMORY_LAYERS[layer])
        BertModel(config).save_pretrained(path)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            shutil.copy(minilm / name, path / name)
    return path


#: `memory_check(model=...)`: a one-layer random model (`layer`), the real MiniLM, or the
#: real MiniLM with its forward pass nulled (the host path alone, as fast as it goes).
MEMORY_MODELS = ("layer", "minilm", "null")


def _null_forward_setup() -> None:
    """In this (child) process: every pipeline nulls its models' forward passes after
    `setup` (`bench.host.null_models`), so the run is the host path alone."""
    from bertetl.bench.host import null_models
    from bertetl.engine.pipeline import Pipeline

    setup = Pipeline.setup

    def setup_then_null(self: Pipeline) -> None:
        setup(self)
        null_models(self)

    Pipeline.setup = setup_then_null  # type: ignore[method-assign]


def _enrich_peak_rss(
    source: str, dest: str, model: str, null: bool = False
) -> tuple[int, float, float]:
    """Rows, peak RSS (MB) and seconds of an end-to-end run (in its own process), with the
    forward passes nulled where `null`."""
    from bertetl.config import EngineConfig
    from bertetl.runs.enrich import enrich

    if null:
        _null_forward_setup()
    started = time.perf_counter()
    report = enrich(source, dest, EngineConfig(text_column="text", embed_model=model, device="cpu"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report.rows, rss, time.perf_counter() - started


def memory_check(
    sizes: list[int], workdir: str | None = None, layer: str = "toy", model: str = "layer"
) -> dict[str, Any]:
    """Peak RSS of an end-to-end run for tables of each size (real reviews, cycled), each run
    in a fresh process with default settings, and its ratio to the first size's. `model`
    (`MEMORY_MODELS`): `layer`, a one-layer model (`MEMORY_LAYERS[layer]`: the toy shows what
    the engine holds, `minilm` adds activations of a real model's width); `minilm`, the real
    MiniLM; `null`, the real MiniLM with its forward pass nulled."""
    from bertetl.bench.corpus import rotten_tomatoes

    if model not in MEMORY_MODELS:
        raise ValueError(f"model {model!r}: one of {', '.join(MEMORY_MODELS)}")
    root = Path(workdir or tempfile.mkdtemp(prefix="bertetl-mem-"))
    model_dir = str(tiny_model(root, layer)) if model == "layer" else "minilm"
    reviews = rotten_tomatoes().select(["review_id", "text"])
    results = []
    for size in sizes:
        src = root / f"src-{size}.parquet"
        with pq.ParquetWriter(src, reviews.schema) as writer:
            for start in range(0, size, reviews.num_rows):
                writer.write_table(reviews.slice(0, min(reviews.num_rows, size - start)))
        rows, rss, seconds = run_in_child(
            _enrich_peak_rss,
            str(src),
            str(root / f"out-{size}"),
            model_dir,
            model == "null",
            name=f"the run of {size} rows",
        )
        results.append({"rows": rows, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1)})
        results[-1]["vs_first"] = round(rss / results[0]["peak_rss_mb"], 3)
        src.unlink()
        shutil.rmtree(root / f"out-{size}", ignore_errors=True)
    if workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    return {
        "model": model,
        "layer": layer if model == "layer" else None,
        "memory": results,
        "peak_rss_ratio_largest_to_smallest": round(ratio, 3),
    }
