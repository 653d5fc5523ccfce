"""Pydantic config models: one source of defaults for the CLI, the Python API and flows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Quantize = Literal["none", "int8"]
Executor = Literal["local", "ray"]
LongText = Literal["truncate", "window"]


class LocalOptions(BaseModel):
    """Options of the local executor: this process, or a pool of worker processes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["local"] = "local"
    workers: int | None = Field(
        None,
        gt=0,
        description="Processes, each with its own model copy and a share of the files; "
        "default one per visible GPU on CUDA, else 1.",
    )


class RayOptions(BaseModel):
    """Options of the Ray executor (`--executor ray`, needs the ray extra)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["ray"] = "ray"
    address: str | None = Field(
        None,
        description="Ray cluster to use with --executor ray; default: RAY_ADDRESS if set, "
        "else a local Ray started for the run and stopped after.",
    )
    actors: int | None = Field(
        None,
        gt=0,
        description="Model actors with --executor ray; default one per cluster GPU, "
        "else one per node.",
    )
    tokenizers: int | None = Field(
        None,
        gt=0,
        description="Tokenizer actors with --executor ray; default as many as model actors.",
    )
    group_rows: int = Field(
        1_000_000,
        gt=0,
        description="With --executor ray, backfill and incremental send partitions to Ray in "
        "groups of about this many rows, so the actor pools start once per group.",
    )


#: Each executor's options model, by `kind` (one line per executor).
EXECUTOR_OPTIONS: dict[str, type[BaseModel]] = {"local": LocalOptions, "ray": RayOptions}
ExecutorOptions = Annotated[LocalOptions | RayOptions, Field(discriminator="kind")]
#: The CLI's flat option names (and older flow parameters') -> the field in `executor`.
FLAT_EXECUTOR_OPTIONS = {
    "workers": "workers",
    "ray_address": "address",
    "ray_actors": "actors",
    "ray_tokenizers": "tokenizers",
    "ray_group_rows": "group_rows",
}


class EngineConfig(BaseModel):
    """What to enrich and how: text column, models, device and batching limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_column: str = Field(description="Column holding the text to encode.")
    embed_model: str | None = Field(
        None, description="Embedding model: a local model dir or the alias 'minilm'."
    )
    classify_model: str | None = Field(
        None, description="Sequence-classification model: a local model dir."
    )
    device: Device = Field("auto", description="auto = cuda when present, else cpu.")
    dtype: DType = Field(
        "auto",
        description="auto = bfloat16 on GPUs that support it, float16 on others, fp32 on CPU.",
    )
    quantize: Quantize = Field(
        "none", description="int8: dynamic int8 quantization of Linear layers (CPU only)."
    )
    batch_tokens: int | None = Field(
        None,
        gt=0,
        description="Padded tokens per model batch (longest row x rows); "
        "default 4096 on CPU, 32768 on GPU.",
    )
    max_batch_rows: int = Field(256, gt=0, description="Row cap per model batch.")
    max_length: int | None = Field(
        None,
        gt=1,
        description="Truncate texts to this many tokens (default: the model's max_seq_length).",
    )
    long_text: LongText = Field(
        "truncate",
        description="Texts longer than the model's limit: truncate = keep the first tokens; "
        "window = cover the text with overlapping token windows and average their outputs "
        "(weighted by each window's tokens).",
    )
    window_overlap: int = Field(
        32, ge=0, description="With --long-text window: tokens shared by consecutive windows."
    )
    max_windows: int = Field(
        64,
        gt=0,
        description="With --long-text window: windows per row at most; a longer text keeps "
        "the first ones and is marked truncated.",
    )
    token_stats: bool = Field(
        False,
        description="Add 'tokens' (content tokens of the whole text), 'windows' (windows "
        "used) and 'truncated' (some text was not seen by the model) per row.",
    )
    prefix: str = Field("", description="Prefix for every added column, e.g. 'minilm_'.")
    window_rows: int = Field(
        4096, gt=0, description="Rows read at a time; batches are length-sorted within it."
    )
    prefetch_windows: int = Field(
        2, ge=0, description="Windows read and tokenized ahead in a thread (0: no thread)."
    )
    include_scores: bool = Field(False, description="Add 'scores': every label's probability.")
    multi_label_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Probability above which a multi-label label is kept."
    )
    allow_pickle: bool = Field(
        False,
        description="Also load pickle (.bin) weights when a model has no safetensors. "
        "Unpickling can run code: only for models you trust.",
    )
    executor: ExecutorOptions = Field(
        default_factory=lambda: LocalOptions(),
        description="local: this process (and --workers); ray: a Ray Data pipeline on a Ray "
        "cluster (needs the ray extra).",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_executor_options(cls, data: Any) -> Any:
        """Accept the CLI's flat spelling (`executor="ray"`, `workers`, `ray_actors`, ...),
        also used by older flow parameters, and nest it under `executor`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        flat = {name: data.pop(name) for name in list(data) if name in FLAT_EXECUTOR_OPTIONS}
        executor = data.get("executor")
        if executor is None and not flat:
            return data
        if isinstance(executor, BaseModel):
            executor = executor.model_dump()
        nested = dict(executor) if isinstance(executor, dict) else {"kind": executor or "local"}
        kind = nested.get("kind", "local")
        given = {name: value for name, value in flat.items() if value is not None}
        if kind == "ray" and given.get("workers"):
            raise ValueError("--workers is for --executor local; with ray use --ray-actors")
        if kind == "local" and {"ray_address", "ray_actors", "ray_tokenizers"} & set(given):
            raise ValueError("--ray-address, --ray-actors and --ray-tokenizers need --executor ray")
        options = EXECUTOR_OPTIONS.get(kind)
        for name, value in given.items():
            field = FLAT_EXECUTOR_OPTIONS[name]
            if options is not None and field in options.model_fields:
                nested[field] = value
        data["executor"] = nested
        return data

    @model_validator(mode="after")
    def _needs_a_model(self) -> EngineConfig:
        if not self.embed_model and not self.classify_model:
            raise ValueError(
                "give at least one of --embed-model / --classify-model "
                "(embed_model / classify_model)"
            )
        return self


class TrainConfig(BaseModel):
    """Fine-tuning a sequence classifier from a labelled Parquet table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_column: str
    label_column: str
    base_model: str = Field("minilm", description="Local model dir or the alias 'minilm'.")
    epochs: float = Field(2.0, gt=0, description="Passes over the training split.")
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    max_length: int = Field(128, gt=1, description="Truncate training texts to this many tokens.")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out share, per label.")
    max_rows: int | None = Field(
        None, gt=0, description="Sample at most this many rows (stratified) to bound time."
    )
    seed: int = 0
    device: Device = "auto"
