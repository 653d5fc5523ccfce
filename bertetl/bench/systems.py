"""`bertetl bench`: the engine against the baselines a user would write, in one run.

Every system runs in its own subprocess (so its peak RSS is its own) on the same texts, with
the model loaded before the clock starts; each is timed over several repetitions after a
warm-up and the median is reported, with ratios of the engine to each baseline.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bertetl.bench import st_onnx
from bertetl.bench.child import ChildError, run_in_child
from bertetl.bench.e2e import engine_e2e_run
from bertetl.bench.host import CODECS
from bertetl.config import Device, DType, NerAggregation
from bertetl.errors import ConfigError, InputError, ModelError
from bertetl.io.inputs import resolve_inputs
from bertetl.io.read import discover, read_columns
from bertetl.io.storage import StorageError

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
#: Dense bf16 tensor-core peaks (FLOP/s) for MFU, by device-name substring.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}
#: The MFU the host projection assumes for the device (the GPU target for BERT-base).
H100_MFU = 0.5


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
        description="With --systems host: tokenizer pool sizes (--tokenizers) to run at each "
        "core count; the first is the baseline of the 'x tokenizers' ratios.",
    )

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


# ---------------------------------------------------------------- inputs and models


#: The input sets bertetl brings; any other is `PATH[:COLUMN]`.
BUILT_IN_INPUTS = ("reviews", "synthetic")


def own_input(inputs: str) -> tuple[str, str]:
    """`PATH[:COLUMN]` as (path, column), the column `text` by default. PATH is a `.parquet`
    file, a local folder, or an object-store URI (a file or a prefix); the colon of `s3://` is
    not a column's."""
    scheme, sep, rest = inputs.partition("://")
    prefix = scheme + sep if sep else ""
    path, _, column = (rest if sep else inputs).partition(":")
    path = prefix + path
    if not (path.endswith(".parquet") or sep or os.path.isdir(path)):
        raise InputError(
            f"unknown input set {inputs!r} ({', '.join(BUILT_IN_INPUTS)}, FILE.parquet, a "
            "folder or an s3://... URI, each with an optional :COLUMN)"
        )
    return path, column or "text"


def check_peer(config: BenchConfig) -> None:
    """With sentence-transformers' ONNX int8 asked for: its venv is there, and the engine
    truncates long texts as it does."""
    if st_onnx.SYSTEM in config.systems:
        st_onnx.check_peer(config.peer_python)
        if config.engine_options.get("long_text", "truncate") != "truncate":
            raise ConfigError(f"{st_onnx.SYSTEM} truncates long texts: drop --long-text")


def check_inputs(config: BenchConfig) -> None:
    """Find the Parquet files of each own input set (`PATH[:COLUMN]`) before any system
    runs: a missing file, bucket or endpoint is one error naming it, not one per system."""
    paths = [own_input(i)[0] for i in config.inputs if i not in BUILT_IN_INPUTS]
    if config.storage_options and not paths:
        raise StorageError("--storage-option is for an s3://... input set (--inputs)")
    for where in resolve_inputs(paths, config.storage_options):
        discover(where)


def input_texts(inputs: str, rows: int, storage_options: dict[str, str] | None = None) -> list[str]:
    """`reviews`, `synthetic`, or `PATH[:COLUMN]` (`own_input`; opened with
    `storage_options` on an object store): your own texts, non-blank ones, cycled to `rows`."""
    from bertetl.bench.corpus import length_mix, rotten_tomatoes

    if inputs not in BUILT_IN_INPUTS:
        path, column = own_input(inputs)
        (where,) = resolve_inputs([path], storage_options)
        texts = [
            text
            for file in discover(where)
            for text in read_columns(file, [column]).column(0).to_pylist()
        ]
        own = [t for t in texts if t and t.strip()]
        if not own:
            raise InputError(f"{path}: column {column!r} holds no text")
        return [own[i % len(own)] for i in range(rows)]
    reviews = [t for t in rotten_tomatoes().column("text").to_pylist() if t and t.strip()]
    if inputs == "reviews":
        return [reviews[i % len(reviews)] for i in range(rows)]
    vocabulary = sorted({w for t in reviews[:3000] for w in t.split()})
    return length_mix(rows, vocabulary)


def _model_dir(name: str, workdir: Path) -> Path:
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


# ---------------------------------------------------------------- systems


def _sync(device: Any) -> Callable[[], None]:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    return sync


def _timed(run: Callable[[], Any], repeats: int, device: Any) -> tuple[list[float], Any]:
    """Seconds of each repetition and the last one's output."""
    sync = _sync(device)
    seconds = []
    out = None
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        out = run()
        sync()
        seconds.append(time.perf_counter() - started)
    return seconds, out


def engine_fields(task: str, model: str, config: BenchConfig) -> dict[str, Any]:
    """The EngineConfig fields that run one bench model (`split_task`) in the engine."""
    from bertetl.bench.heads import NER_HEAD, REVIEW_LABELS

    if task == "ner":
        return {"ner": [f"{NER_HEAD}={model}"], "ner_aggregation": config.ner_aggregation}
    if task == "zero_shot":
        labels = config.zero_shot_labels or {"name": "", "labels": REVIEW_LABELS}
        return {"embed_model": model, "zero_shot": [labels]}
    return {f"{task}_model": model}


def _engine_pipeline(task: str, model_dir: Path, config: BenchConfig) -> Any:
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


def _run_system(
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
    make_run = (_head_systems() if task in heads.REFERENCE else _SYSTEMS).get(system)
    peer = system == st_onnx.SYSTEM
    if (make_run is None and not peer) or system not in TASK_SYSTEMS[task]:
        raise ValueError(f"unknown system {system!r} ({', '.join(TASK_SYSTEMS[task])})")
    model_dir = _model_dir(name, workdir)
    texts = input_texts(inputs, config.rows, config.storage_options)
    device = resolve_device(config.device)
    pipeline = _engine_pipeline(task, model_dir, config)
    tokenizer = pipeline.tokenize_stages[0]
    if system.startswith("engine") or peer:  # the peer's outputs are held to the engine's
        pipeline.setup()
    else:  # a baseline process holds only the baseline's model, so its peak RSS is its own
        tokenizer.setup()
    lengths = token_lengths(tokenizer, texts)
    model_config, params = _model_size(model_dir, task)
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
        result.seconds, without, last = heads.timed_pair(run, config.repeats, _sync(device))
        result.extra = heads.head_cost(result.seconds, without, len(texts))
        runs = 2 * config.repeats
    else:
        result.seconds, last = _timed(run, config.repeats, device)
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


def _model_size(model_dir: Path, task: str) -> tuple[Any, int]:
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
TASK_PREFIXES = {"classify:": "classify", "ner:": "ner", "zero-shot:": "zero_shot"}


def split_task(model: str) -> tuple[str, str]:
    """`classify:DIR` benchmarks a classifier, `ner:DIR` a token classifier, `zero-shot:MODEL`
    a zero-shot head on an embedding model; anything else an embedding model."""
    for prefix, task in TASK_PREFIXES.items():
        if model.startswith(prefix):
            return task, model.removeprefix(prefix)
    return "embed", model


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


def _variant_runs() -> dict[str, Callable[..., Callable[[], None]]]:
    return {system: functools.partial(_engine_variant_run, system) for system in VARIANTS}


_SYSTEMS: dict[str, Callable[..., Callable[[], None]]] = {
    "pipeline": _pipeline_run,
    "sentence-transformers": _sentence_transformers_run,
    "engine-model": _engine_model_run,
    "engine-e2e": engine_e2e_run,
    **_variant_runs(),
}


def _head_systems() -> dict[str, Callable[..., Any]]:
    """The runners of the head tasks (`ner`, `zero_shot`); `TASK_SYSTEMS` says which apply."""
    from bertetl.bench import heads

    return {
        "pipeline": heads.token_classification_run,
        "sentence-transformers": heads.similarity_run,
        "engine-model": heads.stages_run,
        "engine-e2e": heads.e2e_run,
        **_variant_runs(),
    }


def _in_process(*args: Any) -> Result | str:
    try:
        return _run_system(*args)
    except Exception as e:  # reported as an isolated system's error is (`run_in_child`)
        return f"{type(e).__name__}: {e}"


def _isolated(*args: Any) -> Result | str:
    try:
        return run_in_child(_run_system, *args, name=f"the process of {args[0]}")
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
    model_dir = _model_dir(name, workdir)
    texts = input_texts(inputs, config.rows, config.storage_options)
    pipeline = _engine_pipeline(task, model_dir, config)
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
    model_config, params = _model_size(model_dir, task)
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


# ---------------------------------------------------------------- report


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


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


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


#: Columns of each table `format_table` prints: (title, key in the result rows).
SYSTEM_COLUMNS = [
    ("model", "model"),
    ("inputs", "inputs"),
    ("system", "system"),
    ("rows/s", "rows_per_s"),
    ("tokens/s", "tokens_per_s"),
    ("pad waste", "padding_waste"),
    ("x pipeline", "x_pipeline"),
    ("x s-t", "x_sentence-transformers"),
    ("x s-t int8", f"x_{st_onnx.SYSTEM}"),
    ("e2e/model", "share_of_model_only"),
    ("x embed-only", "x_embed_only"),
    ("entities", "entities"),
    ("agree", "rows_agree"),
    ("score diff", "score_max_diff"),
    ("cos fp32", "cosine_mean"),
    ("cos min", "cosine_min"),
    ("= fp32", "label_agreement"),
    ("peak RSS MB", "peak_rss_mb"),
    ("peak GPU MB", "peak_gpu_mb"),
    ("MFU", "mfu"),
]
HOST_COLUMNS = [
    ("model", "model"),
    ("inputs", "inputs"),
    ("cores", "cores"),
    ("codec", "compression"),
    ("rows/s", "rows_per_s"),
    ("tokens/s", "tokens_per_s"),
    ("tokenizers", "tokenizers"),
    ("x first", "x_first_cores"),
    ("tok. alone rows/s", "tokenizer_rows_per_s"),
    ("tok. alone x first", "tokenizer_x_first_cores"),
    ("x tokenizers", "x_first_tokenizers"),
    ("read s", "stage_seconds.read"),
    ("validate s", "stage_seconds.validate"),
    ("tokenize s", "stage_seconds.tokenize"),
    ("infer s", "stage_seconds.infer"),
    ("write s", "stage_seconds.write"),
    ("wall s", "median_s"),
    ("cores for H100", "cores_to_feed_h100"),
]
CODEC_COLUMNS = [
    ("model", "model"),
    ("inputs", "inputs"),
    ("codec", "compression"),
    ("write s", "write_s"),
    ("write rows/s", "write_rows_per_s"),
    ("read s", "read_s"),
    ("file MB", "file_mb"),
    ("embedding B/row", "embedding_bytes_per_row"),
    ("real sample B/row", "sample_real_bytes_per_row"),
    ("null sample B/row", "sample_null_bytes_per_row"),
]
LEFT = {"model", "inputs", "system", "codec"}
PERCENT = {"padding_waste", "mfu", "rows_agree", "label_agreement"}
#: Columns shown in scientific notation (score differences: 1e-6 is not 0.00), or with three
#: decimals (a head's cost, near 1.0), or four (a cosine to fp32).
SCIENTIFIC = {"score_max_diff"}
THREE_DECIMALS = {"x_embed_only"}
FOUR_DECIMALS = {"cosine_mean", "cosine_min"}
#: Columns of the variants' agreement with fp32 torch (`variant_agreement`), whose keys in
#: a result start with int8_ (quantized) or onnx_ (fp32 ONNX).
AGREEMENT_KEYS = {"cosine_mean", "cosine_min", "label_agreement"}
#: Columns of the heads' systems, the variants and sentence-transformers' ONNX int8, printed
#: only when some row has them.
HEAD_KEYS = {
    "x_embed_only",
    "entities",
    "rows_agree",
    "score_max_diff",
    f"x_{st_onnx.SYSTEM}",
    *AGREEMENT_KEYS,
}


def _value(row: dict[str, Any], key: str) -> Any:
    if key in AGREEMENT_KEYS:
        return next((row[f"{p}_{key}"] for p in ("int8", "onnx") if f"{p}_{key}" in row), None)
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(row: dict[str, Any], key: str) -> str:
    value = _value(row, key)
    if isinstance(value, float):
        if key in PERCENT:
            value = f"{value:.1%}"
        elif key in SCIENTIFIC:
            value = f"{value:.1e}"
        elif key in FOUR_DECIMALS:
            value = f"{value:.4f}"
        else:
            value = f"{value:,.3f}" if key in THREE_DECIMALS else f"{value:,.2f}"
    return "" if value is None else str(value)


def _table(title: str, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for heading, _ in columns:
        table.add_column(heading, justify="left" if heading in LEFT else "right")
    for row in rows:
        table.add_row(*(_cell(row, key) for _, key in columns))
    return table


def format_table(report: dict[str, Any]) -> str:
    """Readable tables of the results: the systems, the host path, the Parquet codecs."""
    from rich.console import Console

    device = report["environment"]["device"]
    systems = [r for r in report["results"] if r["system"] != "host"]
    host = [r for r in report["results"] if r["system"] == "host"]
    console = Console(width=200, record=True, file=io.StringIO())
    if systems or not host:
        columns = [
            (title, key)
            for title, key in SYSTEM_COLUMNS
            if key not in HEAD_KEYS or any(_value(row, key) is not None for row in systems)
        ]
        console.print(_table(f"bertetl bench on {device}", columns, systems))
    if host:
        title = f"host path (null model) on {device}: seconds per run, by stage"
        console.print(_table(title, HOST_COLUMNS, host))
    if report.get("codecs"):
        title = "Parquet codecs on the host path's output (one thread)"
        console.print(_table(title, CODEC_COLUMNS, report["codecs"]))
    for error in report["errors"]:
        console.print(f"error: {error}")
    return console.export_text()


# ---------------------------------------------------------------- memory


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


def _enrich_peak_rss(source: str, dest: str, model: str) -> tuple[int, float, float]:
    """Rows, peak RSS (MB) and seconds of an end-to-end run (in its own process)."""
    from bertetl.config import EngineConfig
    from bertetl.runs.enrich import enrich

    started = time.perf_counter()
    report = enrich(source, dest, EngineConfig(text_column="text", embed_model=model, device="cpu"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report.rows, rss, time.perf_counter() - started


def memory_check(
    sizes: list[int], workdir: str | None = None, layer: str = "toy"
) -> dict[str, Any]:
    """Peak RSS of an end-to-end run for tables of each size (real reviews, cycled), each run
    in a fresh process, with a one-layer model (`MEMORY_LAYERS[layer]`): the toy shows what
    the engine holds, `minilm` adds activations of a real model's width."""
    from bertetl.bench.corpus import rotten_tomatoes

    root = Path(workdir or tempfile.mkdtemp(prefix="bertetl-mem-"))
    model = tiny_model(root, layer)
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
            str(model),
            name=f"the run of {size} rows",
        )
        results.append({"rows": rows, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1)})
        src.unlink()
        shutil.rmtree(root / f"out-{size}", ignore_errors=True)
    if workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    return {
        "layer": layer,
        "memory": results,
        "peak_rss_ratio_largest_to_smallest": round(ratio, 3),
    }
