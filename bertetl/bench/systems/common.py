"""What the systems bench's jobs share: a system's result, the bench models, their size and
FLOPs, timing on a device, the engine's pipeline and its outputs."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bertetl.bench.systems.config import BenchConfig, engine_fields

#: Dense bf16 tensor-core peaks (FLOP/s) for MFU, by device-name substring.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}
#: The MFU the host projection assumes for the device (the GPU target for BERT-base).
H100_MFU = 0.5


@dataclass
class Result:
    """One system on one model and input set."""

    system: str
    model: str
    inputs: str
    rows: int
    real_tokens: int
    seconds: list[float]
    padded_tokens: int | None = None
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None
    flops: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: One comparable value per row (heads only: `bertetl.bench.heads.comparable`), which
    #: `run_bench` holds to the task's reference baseline; not in the summary.
    outputs: list[Any] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self, peak_flops: float | None) -> dict[str, Any]:
        rate = self.rows / self.median
        out = {
            **{k: v for k, v in asdict(self).items() if k not in ("extra", "outputs")},
            **self.extra,
            "median_s": round(self.median, 4),
            "rows_per_s": round(rate, 1),
            "tokens_per_s": round(self.real_tokens / self.median, 1),
            "padding_waste": (
                round(1 - self.real_tokens / self.padded_tokens, 4) if self.padded_tokens else None
            ),
        }
        if peak_flops and self.flops:
            out["mfu"] = round(self.flops / self.median / peak_flops, 4)
        else:
            out["mfu"] = None
        return out


def bench_model_dir(name: str, workdir: Path) -> Path:
    """`bert-base` is a BERT-base-sized config with random weights and MiniLM's vocab."""
    from bertetl.engine.model_files import resolve_model_dir

    if name != "bert-base":
        return resolve_model_dir(name)
    path = workdir / "bert-base"
    if not (path / "config.json").is_file():
        import torch
        from transformers import BertConfig, BertModel

        minilm = resolve_model_dir("minilm")
        torch.manual_seed(0)
        BertModel(BertConfig()).save_pretrained(path)
        for name_ in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "modules.json"):
            shutil.copy(minilm / name_, path / name_)
        shutil.copytree(minilm / "1_Pooling", path / "1_Pooling", dirs_exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 768, "pooling_mode_mean_tokens": True})
        )
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    return path


def forward_flops(model_config: Any, lengths: np.ndarray, non_embedding_params: int) -> float:
    """Forward FLOPs ≈ 2·params·tokens + attention (QKᵀ and AV: 4·layers·hidden·len² a row)."""
    tokens = float(lengths.sum())
    attention = 4.0 * model_config.num_hidden_layers * model_config.hidden_size
    return 2.0 * non_embedding_params * tokens + attention * float((lengths**2).sum())


def model_size(model_dir: Path, task: str) -> tuple[Any, int]:
    """The model's config and its non-embedding parameter count, built on the meta device
    (no weights loaded, no memory used)."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    cls = {
        "classify": AutoModelForSequenceClassification,
        "ner": AutoModelForTokenClassification,
    }.get(task, AutoModel)
    with torch.device("meta"):
        model = cls.from_config(config)
    embedding = sum(p.numel() for p in model.base_model.embeddings.parameters())
    return config, sum(p.numel() for p in model.parameters()) - embedding


#: Model prefixes (`--models classify:DIR`) and the task each benchmarks.


def device_sync(device: Any) -> Callable[[], None]:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    return sync


def timed(run: Callable[[], Any], repeats: int, device: Any) -> tuple[list[float], Any]:
    """Seconds of each repetition and the last one's output."""
    sync = device_sync(device)
    seconds = []
    out = None
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        out = run()
        sync()
        seconds.append(time.perf_counter() - started)
    return seconds, out


def engine_pipeline(task: str, model_dir: Path, config: BenchConfig) -> Any:
    """The engine's `Pipeline` for one model, with the bench's device and batch settings."""
    from bertetl.config import EngineConfig
    from bertetl.engine.pipeline import Pipeline

    return Pipeline(
        EngineConfig(
            text_column="text",
            **engine_fields(task, str(model_dir), config),
            device=config.device,
            dtype=config.dtype,
            batch_tokens=config.batch_tokens,
            max_batch_rows=config.max_batch_rows,
            **config.engine_options,
        )
    )


def engine_column(pipeline: Any, texts: list[str]) -> Any:
    """The first output column (an embedding or a label) of a set-up pipeline on `texts`."""
    (out,) = pipeline.transform([pa.RecordBatch.from_pydict({"text": texts})])
    return out.column(pipeline.models[0].fields()[0].name)


def cosine_agreement(a: np.ndarray, b: np.ndarray, key: str) -> dict[str, float]:
    """Mean and least cosine between the rows of `a` and `b`, as `{key}_cosine_mean/min`."""
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        f"{key}_cosine_min": round(float(cos.min()), 5),
        f"{key}_cosine_mean": round(float(cos.mean()), 5),
    }


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)
