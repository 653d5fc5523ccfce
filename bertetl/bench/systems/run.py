"""The systems bench's run: every (model, input set, system), each in its own process (the
host path at each core count), with the environment and the ratios between systems."""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bertetl.bench import st_onnx
from bertetl.bench.child import ChildError, run_in_child
from bertetl.bench.systems.common import (
    H100_MFU,
    PEAK_BF16,
    Result,
    bench_model_dir,
    engine_pipeline,
    forward_flops,
    model_size,
    peak_flops,
)
from bertetl.bench.systems.config import TASK_SYSTEMS, BenchConfig, split_task
from bertetl.bench.systems.inputs import check_inputs, input_texts
from bertetl.bench.systems.measure import run_system
from bertetl.errors import ConfigError


def check_peer(config: BenchConfig) -> None:
    """With sentence-transformers' ONNX int8 asked for: its venv is there, and the engine
    truncates long texts as it does."""
    if st_onnx.SYSTEM in config.systems:
        st_onnx.check_peer(config.peer_python)
        if config.engine_options.get("long_text", "truncate") != "truncate":
            raise ConfigError(f"{st_onnx.SYSTEM} truncates long texts: drop --long-text")


def _in_process(*args: Any) -> Result | str:
    try:
        return run_system(*args)
    except Exception as e:  # reported as an isolated system's error is (`run_in_child`)
        return f"{type(e).__name__}: {e}"


def _isolated(*args: Any) -> Result | str:
    try:
        return run_in_child(run_system, *args, name=f"the process of {args[0]}")
    except ChildError as e:
        return str(e)


def host_system(
    model_name: str, inputs: str, config: BenchConfig, workdir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """The host path (`bertetl.bench.host`) at each core count, with the cores an H100
    would need: its token rate at 50% MFU for this model over these texts, over the tokens a
    core feeds. Returns result rows, codec costs and errors."""
    from bertetl.bench.host import host_bench

    task, name = split_task(model_name)
    model_dir = bench_model_dir(name, workdir)
    texts = input_texts(inputs, config.rows, config.storage_options)
    pipeline = engine_pipeline(task, model_dir, config)
    cores = config.cores or sorted({1, len(os.sched_getaffinity(0))})
    runs, codecs, errors = host_bench(
        pipeline.config,
        texts,
        workdir,
        cores,
        config.repeats,
        config.compression,
        config.isolate,
        tuple(config.tokenizers),
    )
    tokenizer = next(iter(pipeline.tokenizers.values()))
    tokenizer.setup()
    lengths = np.array([len(ids) for ids in tokenizer.encode(texts)])
    model_config, params = model_size(model_dir, task)
    per_token = forward_flops(model_config, lengths, params) / max(1, int(lengths.sum()))
    device_rate = H100_MFU * PEAK_BF16["H100"] / per_token
    for run in runs:
        run.update(system="host", model=model_name, inputs=inputs)
        run["flops_per_token"] = round(per_token)
        run["h100_tokens_per_s"] = round(device_rate)
        run["cores_to_feed_h100"] = round(device_rate / (run["tokens_per_s"] / run["cores"]), 1)
    for cost in codecs:
        cost.update(model=model_name, inputs=inputs)
    return runs, codecs, errors


def environment() -> dict[str, Any]:
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyarrow": pa.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def add_ratios(group: list[dict[str, Any]]) -> None:
    """The engine's rows of one model and input set: its rate over each baseline's, and the
    share of the model stage's rate that the end-to-end systems keep."""
    rates = {r["system"]: r["rows_per_s"] for r in group}
    for row in group:
        if not row["system"].startswith("engine"):
            continue
        for base in ("pipeline", "sentence-transformers", st_onnx.SYSTEM):
            if base in rates:
                row[f"x_{base}"] = round(row["rows_per_s"] / rates[base], 2)
        if "engine-model" in rates and row["system"] != "engine-model":
            row["share_of_model_only"] = round(row["rows_per_s"] / rates["engine-model"], 3)


def run_bench(config: BenchConfig, until: float | None = None) -> dict[str, Any]:
    """Run every (model, input set, system) and return results with ratios; a system not
    started by `until` (a `time.monotonic()` deadline) is reported as skipped."""
    check_inputs(config)  # before any system: a bad input is one error, not one per system
    check_peer(config)
    env = environment()
    peak = peak_flops(env["device"])
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="bertetl-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    codecs: list[dict[str, Any]] = []
    outputs: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for model_name, inputs, system in itertools.product(
        config.models, config.inputs, config.systems
    ):
        if system not in TASK_SYSTEMS[split_task(model_name)[0]]:
            continue  # no counterpart for this kind of model (e.g. s-t for a classifier)
        if until is not None and time.monotonic() > until:
            errors.append(f"{system} / {model_name} / {inputs}: skipped, out of time")
        elif system == "host":
            runs, costs, failed = host_system(model_name, inputs, config, workdir)
            rows.extend(runs)
            codecs.extend(costs)
            errors.extend(failed)
        else:
            args = (system, model_name, inputs, config, workdir)
            outcome = _isolated(*args) if config.isolate else _in_process(*args)
            if isinstance(outcome, str):
                errors.append(f"{system} / {model_name} / {inputs}: {outcome}")
            else:
                rows.append(outcome.summary(peak))
                if outcome.outputs is not None:
                    outputs.setdefault((model_name, inputs), {})[system] = outcome.outputs
    for model_name, inputs in itertools.product(config.models, config.inputs):
        group = [r for r in rows if r["model"] == model_name and r["inputs"] == inputs]
        add_ratios(group)
        if (model_name, inputs) in outputs:
            from bertetl.bench.heads import add_agreement

            add_agreement(split_task(model_name)[0], group, outputs[model_name, inputs])
    if config.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {"environment": env, "config": config.model_dump(), "results": rows, "errors": errors}
    if codecs:
        report["codecs"] = codecs
    return report
