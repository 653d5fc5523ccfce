"""One system on one model and input set, in its own process: set up, warmed up, timed over
the repeats, with its tokens, FLOPs, peak memory and agreement."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import numpy as np

from bertetl.bench import st_onnx
from bertetl.bench.systems.common import (
    Result,
    bench_model_dir,
    cosine_agreement,
    device_sync,
    engine_column,
    engine_pipeline,
    forward_flops,
    model_size,
    timed,
)
from bertetl.bench.systems.config import (
    BASELINE_BATCH,
    TASK_SYSTEMS,
    VARIANTS,
    BenchConfig,
    split_task,
)
from bertetl.bench.systems.inputs import input_texts
from bertetl.bench.systems.runners import RUNNERS, head_runners, variant_agreement
from bertetl.errors import ModelError


def run_system(
    system: str, model_name: str, inputs: str, config: BenchConfig, workdir: Path
) -> Result:
    """One system on one model and input set, timed after a warm-up (in its own process)."""
    import torch
    import transformers

    from bertetl.bench import heads
    from bertetl.engine.encoders import resolve_device, resolve_dtype

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    task, name = split_task(model_name)
    make_run = (head_runners() if task in heads.REFERENCE else RUNNERS).get(system)
    peer = system == st_onnx.SYSTEM
    if (make_run is None and not peer) or system not in TASK_SYSTEMS[task]:
        raise ValueError(f"unknown system {system!r} ({', '.join(TASK_SYSTEMS[task])})")
    model_dir = bench_model_dir(name, workdir)
    texts = input_texts(inputs, config.rows, config.storage_options)
    device = resolve_device(config.device)
    pipeline = engine_pipeline(task, model_dir, config)
    tokenizer = pipeline.tokenize_stages[0]
    if system.startswith("engine") or peer:  # the peer's outputs are held to the engine's
        pipeline.setup()
    else:  # a baseline process holds only the baseline's model, so its peak RSS is its own
        tokenizer.setup()
    lengths = token_lengths(tokenizer, texts)
    model_config, params = model_size(model_dir, task)
    result = Result(system, model_name, inputs, len(texts), int(lengths.sum()), [])
    result.flops = forward_flops(model_config, lengths, params)
    if peer:
        result.seconds, result.peak_rss_mb, result.extra = _peer_figures(
            texts, model_dir, workdir, config, pipeline
        )
        return result
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    setup = dict(
        task=task,
        pipeline=pipeline,
        model_dir=model_dir,
        max_length=tokenizer.max_length,
        device=device,
        dtype=resolve_dtype(config.dtype, device),
        workdir=workdir,
        aggregation=config.ner_aggregation,
    )
    warm_up = make_run(texts[:64], **setup)
    warm_up()
    if isinstance(warm_up, heads.Paired):
        warm_up.without_head()
    model = pipeline.models[0]
    before = model.counters.padded_tokens
    run = make_run(texts, **setup)
    if isinstance(run, heads.Paired):  # the embedding stage runs twice a repeat
        result.seconds, without, last = heads.timed_pair(run, config.repeats, device_sync(device))
        result.extra = heads.head_cost(result.seconds, without, len(texts))
        runs = 2 * config.repeats
    else:
        result.seconds, last = timed(run, config.repeats, device)
        runs = config.repeats
    if system in ("engine-model", "engine-e2e"):
        result.padded_tokens = (model.counters.padded_tokens - before) // runs
    if task in heads.REFERENCE:
        result.outputs = heads.comparable(task, last)
    elif system in VARIANTS:
        result.extra = variant_agreement(texts, pipeline, VARIANTS[system])
    elif system == "pipeline":  # batches of 32 in input order, padded to their longest
        chunks = np.array_split(lengths, max(1, -(-len(lengths) // BASELINE_BATCH)))
        result.padded_tokens = int(sum(len(c) * c.max() for c in chunks))
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    return result


def _peer_figures(
    texts: list[str], model_dir: Path, workdir: Path, config: BenchConfig, pipeline: Any
) -> tuple[list[float], float, dict[str, Any]]:
    """sentence-transformers' ONNX int8 (`st_onnx`): its seconds, peak RSS and agreement with
    the fp32 torch engine. Its own fp32 ONNX model must agree with the engine's (cosine >=
    0.999, the same max length), or the two did not embed the same texts the same way."""
    report, int8, fp32 = st_onnx.peer_run(
        texts, model_dir, workdir, config.repeats, config.peer_python
    )
    reference = engine_column(pipeline, texts).values.to_numpy().reshape(len(texts), -1)
    same = cosine_agreement(reference, fp32, "fp32")
    max_length = pipeline.tokenize_stages[0].max_length
    if report["max_seq_length"] != max_length or same["fp32_cosine_min"] < 0.999:
        raise ModelError(
            f"{st_onnx.SYSTEM} does not embed as the engine does: its max length "
            f"{report['max_seq_length']} (the engine's {max_length}), its fp32 ONNX model's "
            f"least cosine to the engine's {same['fp32_cosine_min']}"
        )
    extra = {
        **cosine_agreement(reference, int8, "int8"),
        "peer_fp32_cosine_min": same["fp32_cosine_min"],
        "preset": report["preset"],
        "peer_versions": report["versions"],
    }
    return report["seconds"], report["peak_rss_mb"], extra


def token_lengths(tokenizer: Any, texts: list[str]) -> np.ndarray:
    """Tokens the model is given per text, special tokens included (a `TokenizeStage`, or an
    NER head's `NerTokenizeStage`: its content tokens up to the limit, plus the specials)."""
    from bertetl.engine.ner import NerTokenizeStage

    if isinstance(tokenizer, NerTokenizeStage):
        encodings, _ = tokenizer.encodings(texts)
        assert tokenizer.rule is not None  # set by setup()
        specials = len(tokenizer.head) + len(tokenizer.tail)
        return np.array([min(len(e.ids), tokenizer.rule.limit) + specials for e in encodings])
    return np.array([len(ids) for ids in tokenizer.encode(texts)])
