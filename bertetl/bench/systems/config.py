"""What the systems bench runs: its systems, which of them each kind of model has, and its
options (`BenchConfig`, whose descriptions are the CLI's help)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bertetl.bench import st_onnx
from bertetl.bench.host import CODECS
from bertetl.config import Device, DType, NerAggregation

SYSTEMS = (
    "pipeline",
    "sentence-transformers",
    "engine-model",
    "engine-e2e",
    "engine-e2e-int8",
    "engine-e2e-onnx",
    "engine-e2e-onnx-int8",
    "host",
    st_onnx.SYSTEM,
)
#: The engine's variants: the engine end to end with these EngineConfig fields, each
#: reporting how close its outputs are to the fp32 torch engine's (`variant_agreement`).
#: The ONNX ones need the onnx extra and run on the CPU only.
VARIANTS: dict[str, dict[str, str]] = {
    "engine-e2e-int8": {"quantize": "int8"},
    "engine-e2e-onnx": {"backend": "onnx"},
    "engine-e2e-onnx-int8": {"backend": "onnx", "quantize": "int8"},
}
BASELINE_BATCH = 32
#: The systems each kind of model has (`split_task`); the others are skipped for it:
#: sentence-transformers has no classifier or NER counterpart, the pipeline no zero-shot one
#: (its zero-shot pipeline is an NLI model), and the host path covers embed and classify.
TASK_SYSTEMS = {
    "embed": SYSTEMS,
    "classify": tuple(s for s in SYSTEMS if not s.startswith("sentence-transformers")),
    "ner": ("pipeline", "engine-model", "engine-e2e", "engine-e2e-int8"),
    "zero_shot": ("sentence-transformers", "engine-model", "engine-e2e", *VARIANTS),
}


class BenchConfig(BaseModel):
    """What to benchmark; defaults fit a 2-core CPU in a few minutes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[str] = Field(
        ["minilm"],
        description="minilm, bert-base (random), embedding model dirs, classify:DIR for a "
        "sequence classifier (compared with the text-classification pipeline), ner:DIR for a "
        "token classifier (with the token-classification pipeline) or zero-shot:MODEL for a "
        "zero-shot head on an embedding model (with sentence-transformers similarity).",
    )
    inputs: list[str] = Field(
        ["reviews", "synthetic"],
        description="reviews, synthetic, or PATH.parquet[:COLUMN] (your own texts; PATH may "
        "be a folder, or an s3://... file or prefix).",
    )
    storage_options: dict[str, str] = Field(
        {},
        exclude=True,  # may hold keys; never written into the report
        description="Options of s3:// inputs (`--storage-option`, docs/STORAGE.md).",
    )
    systems: list[str] = Field(
        [s for s in SYSTEMS if s not in (*VARIANTS, "host", st_onnx.SYSTEM)],
        description="Which systems to run.",
    )
    peer_python: str = Field(
        st_onnx.PEER_PYTHON,
        description="The interpreter of the peer venv (`make peers`) that runs "
        "sentence-transformers-onnx-int8: sentence-transformers 5 with optimum-onnx, which "
        "needs transformers < 4.58.",
    )
    rows: int = Field(600, gt=0, description="Texts per input set.")
    repeats: int = Field(3, gt=0, description="Timed repetitions; the median is reported.")
    device: Device = "auto"
    dtype: DType = "auto"
    batch_tokens: int | None = Field(None, gt=0, description="Default: the engine's.")
    max_batch_rows: int = Field(256, gt=0)
    workdir: str | None = Field(None, description="Scratch folder (default: a temp dir).")
    isolate: bool = Field(
        True,
        description="Run each system in its own process, so its peak RSS is its own "
        "(off: all in this process, faster, RSS figures meaningless).",
    )
    engine_options: dict[str, Any] = Field(
        {},
        description="More EngineConfig fields for the engine's systems (a variant such as an "
        "unpadded or compiled path, where the engine offers one).",
    )
    cores: list[int] | None = Field(
        None,
        description="The host system at each of these core counts, each in a process pinned to "
        "that many CPUs (default: 1 and all this process may use).",
    )
    ner_aggregation: NerAggregation = Field(
        "simple", description="With ner:DIR: the aggregation of the engine and the pipeline."
    )
    zero_shot_labels: str | None = Field(
        None,
        description="With zero-shot:MODEL: a comma list or a YAML/JSON label file, as "
        "--zero-shot takes (default: fresh, rotten, plot with two descriptions each).",
    )
    compression: list[str] = Field(
        ["zstd"],
        description="Parquet codecs for the host system (zstd, lz4, snappy, none): the first at "
        "every core count, the others at the largest, and then each codec's cost on the output.",
    )

    tokenizers: list[int] = Field(
        [0],
        description="Tokenizer pool sizes (as enrich's --tokenizers) the host bench runs at each "
        "core count; the first is the baseline of the 'x tokenizers' ratios.",
    )

    @field_validator("systems")
    @classmethod
    def _known_systems(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in SYSTEMS]
        if unknown or not value:
            raise ValueError(
                f"unknown system(s) {', '.join(unknown) or '(none given)'}; known: "
                f"{', '.join(SYSTEMS)}"
            )
        return value

    @field_validator("cores")
    @classmethod
    def _positive_cores(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError("core counts are positive integers, e.g. 1,2")
        available = len(os.sched_getaffinity(0))
        if value is not None and max(value) > available:
            raise ValueError(f"{max(value)} cores asked, but this process may use only {available}")
        return value

    @field_validator("tokenizers")
    @classmethod
    def _pool_sizes(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 0:
            raise ValueError("tokenizer pool sizes are integers >= 0, e.g. 0,2")
        return value

    @field_validator("compression")
    @classmethod
    def _known_codecs(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in CODECS]
        if unknown or not value:
            raise ValueError(f"unknown codec {unknown or value} ({', '.join(CODECS)})")
        return value


TASK_PREFIXES = {"classify:": "classify", "ner:": "ner", "zero-shot:": "zero_shot"}


def split_task(model: str) -> tuple[str, str]:
    """`classify:DIR` benchmarks a classifier, `ner:DIR` a token classifier, `zero-shot:MODEL`
    a zero-shot head on an embedding model; anything else an embedding model."""
    for prefix, task in TASK_PREFIXES.items():
        if model.startswith(prefix):
            return task, model.removeprefix(prefix)
    return "embed", model


def engine_fields(task: str, model: str, config: BenchConfig) -> dict[str, Any]:
    """The EngineConfig fields that run one bench model (`split_task`) in the engine."""
    from bertetl.bench.heads import NER_HEAD, REVIEW_LABELS

    if task == "ner":
        return {"ner": [f"{NER_HEAD}={model}"], "ner_aggregation": config.ner_aggregation}
    if task == "zero_shot":
        labels = config.zero_shot_labels or {"name": "", "labels": REVIEW_LABELS}
        return {"embed_model": model, "zero_shot": [labels]}
    return {f"{task}_model": model}
