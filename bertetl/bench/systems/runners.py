"""The systems: for each, a function that sets it up on the texts (model loaded) and returns
the run to time; the baselines a user would write, the engine, its variants."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bertetl.bench.e2e import engine_e2e_run
from bertetl.bench.systems.common import cosine_agreement, engine_column
from bertetl.bench.systems.config import BASELINE_BATCH, VARIANTS


def _pipeline_run(
    texts: list[str],
    model_dir: Path,
    max_length: int,
    device: Any,
    dtype: Any,
    task: str = "embed",
    **_: Any,
) -> Callable[[], None]:
    """transformers' pipeline, batch 32: feature-extraction plus the user's mean pooling, or
    text-classification."""
    from transformers import pipeline as hf_pipeline

    if task == "classify":
        classifier = hf_pipeline(
            "text-classification", model=str(model_dir), device=device, dtype=dtype
        )
        return lambda: classifier(
            texts, batch_size=BASELINE_BATCH, truncation=True, max_length=max_length
        )
    pipe = hf_pipeline("feature-extraction", model=str(model_dir), device=device, dtype=dtype)

    def run() -> None:
        outputs = pipe(
            texts,
            batch_size=BASELINE_BATCH,
            truncation=True,
            return_tensors=True,
            tokenize_kwargs={"max_length": max_length},
        )
        for output in outputs:
            output[0].float().mean(dim=0)

    return run


def _sentence_transformers_run(
    texts: list[str], model_dir: Path, device: Any, dtype: Any, **_: Any
) -> Callable[[], None]:
    """sentence-transformers' encode, batch 32 (it sorts by length itself)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=str(device))
    if dtype != torch.float32:
        model = model.to(dtype)
    return lambda: model.encode(texts, batch_size=BASELINE_BATCH, show_progress_bar=False)


def _engine_model_run(texts: list[str], pipeline: Any, **_: Any) -> Callable[[], None]:
    """The engine's model stage alone over pre-tokenized windows."""
    tokenizer = next(iter(pipeline.tokenizers.values()))
    window = pipeline.config.window_rows
    batches = (
        pa.RecordBatch.from_pydict({"text": texts[i : i + window]})
        for i in range(0, len(texts), window)
    )
    windows = list(tokenizer(pipeline.validate(batches)))
    model = pipeline.models[0]

    def run() -> None:
        for _ in model(windows):
            pass

    return run


def _engine_variant_run(
    system: str, texts: list[str], pipeline: Any, **kwargs: Any
) -> Callable[[], None]:
    """The engine end to end as one of `VARIANTS` runs it (`--quantize int8` and/or
    `--backend onnx`; set up, and for ONNX exported or found in the cache, before the clock)."""
    from bertetl.engine.pipeline import Pipeline

    variant = Pipeline(pipeline.config.model_copy(update=VARIANTS[system]))
    variant.setup()
    return engine_e2e_run(texts, variant, **kwargs)


def variant_agreement(texts: list[str], pipeline: Any, update: dict[str, str]) -> dict[str, float]:
    """How close a variant's outputs (`pipeline`'s config with `update`) are to the fp32 torch
    engine's on the same texts: embedding cosine, or the share of identical labels for a
    classifier; keys `int8_*` for a quantized variant, `onnx_*` for fp32 ONNX."""
    from bertetl.engine.pipeline import Pipeline

    variant = Pipeline(pipeline.config.model_copy(update=update))
    variant.setup()
    key = "int8" if update.get("quantize") == "int8" else update.get("backend", "variant")
    outputs = [engine_column(engine, texts) for engine in (pipeline, variant)]
    if not pa.types.is_fixed_size_list(outputs[0].type):
        same = np.array(outputs[0].to_pylist()) == np.array(outputs[1].to_pylist())
        return {f"{key}_label_agreement": round(float(same.mean()), 5)}
    a, b = (column.values.to_numpy().reshape(len(texts), -1) for column in outputs)
    return cosine_agreement(a, b, key)


def variant_runs() -> dict[str, Callable[..., Callable[[], None]]]:
    return {system: functools.partial(_engine_variant_run, system) for system in VARIANTS}


RUNNERS: dict[str, Callable[..., Callable[[], None]]] = {
    "pipeline": _pipeline_run,
    "sentence-transformers": _sentence_transformers_run,
    "engine-model": _engine_model_run,
    "engine-e2e": engine_e2e_run,
    **variant_runs(),
}


def head_runners() -> dict[str, Callable[..., Any]]:
    """The runners of the head tasks (`ner`, `zero_shot`); `TASK_SYSTEMS` says which apply."""
    from bertetl.bench import heads

    return {
        "pipeline": heads.token_classification_run,
        "sentence-transformers": heads.similarity_run,
        "engine-model": heads.stages_run,
        "engine-e2e": heads.e2e_run,
        **variant_runs(),
    }
