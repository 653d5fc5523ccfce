"""Pydantic config models: one source of defaults for the CLI, the Python API and flows."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bertetl.errors import ConfigError
from bertetl.executor_registry import (
    ExecutorOptions,
    default_options,
    executor_help,
    nest_flat_options,
)
from bertetl.labels import ZeroShotLabel, read_labels
from bertetl.output_options import MODEL, OUTPUT, SPEED, added_later, only_with

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Quantize = Literal["none", "int8"]
Backend = Literal["torch", "onnx"]
LongText = Literal["truncate", "window"]
#: What one output row is: an input row, or one of its token windows (`--emit`).
Emit = Literal["rows", "windows", "rows,windows"]
EmbedPrecision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]


#: A head's name prefixes its columns (`NAME_label`): a letter or `_`, then letters, digits, `_`.
HEAD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The default softmax temperature of zero-shot scores: sentence-transformers' contrastive
#: training (MultipleNegativesRankingLoss, the all-* models such as MiniLM) scales cosine
#: similarities by 20, i.e. a temperature of 0.05.
ZERO_SHOT_TEMPERATURE = 0.05


def _check_head_name(name: str) -> str:
    if name and not HEAD_NAME.fullmatch(name):
        raise ConfigError(
            f"head name {name!r} cannot prefix column names: use letters, digits and _ "
            "(not starting with a digit)"
        )
    return name


class ClassifierHead(BaseModel):
    """A sequence classifier: `NAME_label`, `NAME_score` (and `NAME_scores`, `NAME_labels`);
    the unnamed head (`--classify-model`) writes `label`, `score`, ..."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["classify"] = "classify"
    name: str = Field(description="Column prefix (NAME_label); empty for the unnamed head.")
    model: str = Field(description="Sequence-classification model: a local model dir.")

    _name = field_validator("name")(_check_head_name)


class ZeroShotHead(BaseModel):
    """Labels from an embedding model, no training: each row gets the label whose vector (the
    normalised mean of its descriptions' embeddings) is most similar to the row's embedding.
    The labels (with their descriptions) are resolved here, from a comma list or a label
    file, so the config (and the output's config hash) changes when a description does."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["zero_shot"] = "zero_shot"
    name: str = Field("", description="Column prefix (NAME_label); empty: label, score, ...")
    labels: tuple[ZeroShotLabel, ...]

    _name = field_validator("name")(_check_head_name)

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_from_mapping(cls, value: Any) -> Any:
        """Also accept `{label: description or [descriptions]}` (flow parameters)."""
        if isinstance(value, dict):
            return [
                {"name": k, "descriptions": [v] if isinstance(v, str) else v}
                for k, v in value.items()
            ]
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: tuple[ZeroShotLabel, ...]) -> tuple[ZeroShotLabel, ...]:
        names = [label.name for label in labels]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"duplicate label(s) {', '.join(map(repr, duplicates))}")
        if len(labels) < 2:
            raise ConfigError(f"give at least two labels (got {names})")
        for label in labels:
            if not label.name.strip():
                raise ConfigError("a label is empty; give every label a name")
            if not label.descriptions:
                raise ConfigError(f"label {label.name!r} has no description")
            if any(not d.strip() for d in label.descriptions):
                raise ConfigError(f"label {label.name!r} has an empty description")
        return labels

    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]


NerAggregation = Literal["simple", "first", "average", "max"]


class NerHead(BaseModel):
    """A token-classification model (named entities): `NAME_entities` (and `NAME_redacted`
    with --redact)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["ner"] = "ner"
    name: str = Field(description="Column prefix (NAME_entities).")
    model: str = Field(description="Token-classification model: a local model dir.")

    _name = field_validator("name")(_check_head_name)


#: Every kind of head, by `kind`: the pipeline builds each kind's stages
#: (`bertetl.engine.pipeline.Pipeline.HEAD_STAGES`). A new kind adds its model here.
Head = Annotated[ClassifierHead | ZeroShotHead | NerHead, Field(discriminator="kind")]


def split_head(value: str) -> tuple[str, str]:
    """`NAME=VALUE` -> (NAME, VALUE); a value whose text before `=` is not a head name (or
    that has no `=`) -> ("", value)."""
    name, sep, rest = value.partition("=")
    if sep and HEAD_NAME.fullmatch(name.strip()):
        return name.strip(), rest.strip()
    return "", value.strip()


def _heads_from_strings(value: Any, parse: Callable[[str], Any]) -> Any:
    """A heads field with each string (the CLI's spelling) turned into a head by `parse`;
    head models and dicts pass through to the field's own validation."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    return [parse(item) if isinstance(item, str) else item for item in items]


def _named_model_heads(value: Any, hint: str) -> Any:
    """A field of `NAME=DIR` heads from the CLI's strings (`hint` says how, when one has no
    name)."""

    def parse(item: str) -> dict[str, str]:
        name, model = split_head(item)
        if not name or not model:
            raise ConfigError(f"{item!r}: {hint}")
        return {"name": name, "model": model}

    return _heads_from_strings(value, parse)


def _head_names(heads: tuple[ClassifierHead | NerHead, ...]) -> list[str]:
    """What the config hash keeps of classifier and NER heads (their models are hashed by
    fingerprint)."""
    return [head.name for head in heads]


def _head_dumps(heads: tuple[ZeroShotHead, ...]) -> list[dict[str, Any]]:
    """What the config hash keeps of zero-shot heads: all of them (labels and descriptions
    are their output, so an edit re-labels)."""
    return [head.model_dump(mode="json") for head in heads]


class EngineConfig(BaseModel):
    """What to enrich and how: text column, models, device and batching limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each field declares whether and how it changes the outputs (OUTPUT, added_later(...),
    # only_with(...), MODEL or SPEED: `bertetl.output_options`); the config hash reads that.
    # (A comment, not the docstring: the docstring is the flow parameters' description.)

    text_column: Annotated[str, OUTPUT] = Field(description="Column holding the text to encode.")
    embed_model: Annotated[str | None, MODEL] = Field(
        None,
        description="Embedding model: a local model dir, the alias 'minilm', or a Hugging Face "
        "Hub name ORG/NAME[@REVISION] (docs/MODELS.md).",
    )
    classify_model: Annotated[str | None, MODEL] = Field(
        None,
        description="Sequence-classification model: a local model dir or a Hub name "
        "ORG/NAME[@REVISION].",
    )
    classify: Annotated[tuple[ClassifierHead, ...], added_later((), hashed=_head_names)] = Field(
        (),
        description="NAME=DIR: a sequence classifier writing NAME_label, NAME_score (and "
        "NAME_scores, NAME_labels); repeat for several in one pass.",
    )
    zero_shot: Annotated[tuple[ZeroShotHead, ...], added_later((), hashed=_head_dumps)] = Field(
        (),
        description="Zero-shot labels from the embedding model, no training: LABELS (a,b,c, "
        "or a .yaml/.json file mapping each label to one or more descriptions) writes label, "
        "score; NAME=LABELS writes NAME_label, NAME_score. Repeatable.",
    )
    zero_shot_template: Annotated[str | None, only_with("zero_shot")] = Field(
        None,
        description="With --zero-shot: embed each label description through this template, "
        "e.g. 'a news article about {}'.",
    )
    zero_shot_temperature: Annotated[float, only_with("zero_shot")] = Field(
        ZERO_SHOT_TEMPERATURE,
        gt=0,
        description="With --zero-shot: scores are the softmax of cosine similarities divided "
        "by this (0.05: the scale the all-* sentence-transformers models were trained with).",
    )
    zero_shot_min_score: Annotated[float | None, only_with("zero_shot")] = Field(
        None,
        ge=0.0,
        le=1.0,
        description="With --zero-shot: leave the label null where the best score is below this.",
    )
    zero_shot_model: Annotated[str | None, MODEL] = Field(
        None,
        description="With --zero-shot: the embedding model to label with (local dir or "
        "'minilm'); default --embed-model, whose embeddings are then reused (no second pass).",
    )
    ner: Annotated[tuple[NerHead, ...], added_later((), hashed=_head_names)] = Field(
        (),
        description="NAME=DIR: a token-classification model writing NAME_entities "
        "(start, end, label, score, text per entity; character offsets). Repeatable.",
    )
    ner_aggregation: Annotated[NerAggregation, only_with("ner")] = Field(
        "simple",
        description="With --ner: how token predictions become entities, as transformers' "
        "token-classification pipeline does (simple, first, average, max).",
    )
    ner_labels: Annotated[tuple[str, ...], only_with("ner")] = Field(
        (), description="With --ner: entity types to keep, e.g. PER,ORG (default all)."
    )
    redact: Annotated[bool, only_with("ner")] = Field(
        False,
        description="With --ner: also write NAME_redacted, the text with each kept entity "
        "replaced by [LABEL].",
    )
    device: Annotated[Device, SPEED] = Field(
        "auto", description="auto = cuda when present, else cpu."
    )
    dtype: Annotated[DType, OUTPUT] = Field(
        "auto",
        description="auto = bfloat16 on GPUs that support it, float16 on others, fp32 on CPU.",
    )
    quantize: Annotated[Quantize, OUTPUT] = Field(
        "none", description="int8: dynamic int8 quantization of Linear layers (CPU only)."
    )
    backend: Annotated[Backend, added_later("torch")] = Field(
        "torch",
        description="onnx: run the models with ONNX Runtime (CPU only; exported once from the "
        "model folder and cached, int8 with --quantize int8; needs the 'onnx' extra).",
    )
    unpadded: Annotated[bool, SPEED] = Field(
        False,
        description="Run embed and classify models on each batch's real tokens only, packed "
        "end to end with attention per text (torch nested tensors + SDPA; a varlen kernel on "
        "CUDA); BERT models. Same outputs as the padded path (to float rounding). Off by "
        "default: no faster on the CPU, where batches are length-sorted already; not yet "
        "measured on a GPU (make gpu-check compares both).",
    )
    compile: Annotated[bool, SPEED] = Field(
        False,
        description="torch.compile the models (dynamic shapes; the first batches of each new "
        "shape pay for compiling). Off by default: not yet measured on a GPU (make gpu-check "
        "compares both); on the CPU compiling costs more than it saves on a run.",
    )
    cuda_graphs: Annotated[bool, SPEED] = Field(
        False,
        description="Replay each embed and classify batch from a CUDA graph captured once per "
        "batch shape (batches padded to widths in steps of 32 tokens and power-of-two row "
        "counts); cuts kernel-launch time, which bounds small models on large GPUs. CUDA only; "
        "the padded, uncompiled torch path. Off by default: not yet measured on a GPU (make "
        "gpu-check compares both).",
    )
    batch_tokens: Annotated[int | None, SPEED] = Field(
        None,
        gt=0,
        description="Padded tokens per model batch (longest row x rows); "
        "default 4096 on CPU, 32768 on GPU.",
    )
    max_batch_rows: Annotated[int, SPEED] = Field(256, gt=0, description="Row cap per model batch.")
    max_length: Annotated[int | None, OUTPUT] = Field(
        None,
        gt=1,
        description="Truncate texts to this many tokens (default: the model's max_seq_length).",
    )
    long_text: Annotated[LongText, added_later("truncate")] = Field(
        "truncate",
        description="Texts longer than the model's limit: truncate = keep the first tokens; "
        "window = cover the text with overlapping token windows and average their outputs "
        "(weighted by each window's tokens).",
    )
    window_overlap: Annotated[int, only_with("long_text")] = Field(
        32, ge=0, description="With --long-text window: tokens shared by consecutive windows."
    )
    max_windows: Annotated[int, only_with("long_text")] = Field(
        64,
        gt=0,
        description="With --long-text window: windows per row at most; a longer text keeps "
        "the first ones and is marked truncated.",
    )
    emit: Annotated[Emit, added_later("rows")] = Field(
        "rows",
        description="What one output row is: rows = one per input row; windows = one per "
        "token window of --long-text window (the chunks retrieval indexes), with the row's "
        "columns, 'window', 'char_start', 'char_end' and the window's own embedding; "
        "rows,windows = window rows that also carry the row's pooled 'row_embedding' "
        "(docs/LONG_TEXT.md).",
    )
    token_stats: Annotated[bool, added_later(False)] = Field(
        False,
        description="Add 'tokens' (content tokens of the whole text), 'windows' (windows "
        "used) and 'truncated' (some text was not seen by the model) per row.",
    )
    prefix: Annotated[str, OUTPUT] = Field(
        "", description="Prefix for every added column, e.g. 'minilm_'."
    )
    window_rows: Annotated[int, SPEED] = Field(
        4096, gt=0, description="Rows read at a time; batches are length-sorted within it."
    )
    prefetch_windows: Annotated[int, SPEED] = Field(
        2, ge=0, description="Windows read and tokenized ahead in a thread (0: no thread)."
    )
    write_behind_windows: Annotated[int, SPEED] = Field(
        2,
        ge=0,
        description="Enriched windows the models may run ahead of the Parquet writer: the "
        "models run in a thread and the calling thread writes (0: models and writer take "
        "turns on one thread).",
    )
    include_scores: Annotated[bool, OUTPUT] = Field(
        False, description="Add 'scores': every label's probability."
    )
    multi_label_threshold: Annotated[float, OUTPUT] = Field(
        0.5, ge=0.0, le=1.0, description="Probability above which a multi-label label is kept."
    )
    prompt: Annotated[str | None, added_later(None)] = Field(
        None,
        description="Text put before each row for the embedding model, e.g. 'query: ' "
        "(sentence-transformers' prompt; docs/MODELS.md lists each model family's).",
    )
    prompt_name: Annotated[str | None, added_later(None)] = Field(
        None,
        description="The embedding model's prompt of this name (its "
        "config_sentence_transformers.json 'prompts'); default: its default_prompt_name.",
    )
    embed_dim: Annotated[int | None, added_later(None)] = Field(
        None,
        gt=0,
        description="Keep the embedding's first N dimensions (Matryoshka models), "
        "re-normalized when the model normalizes.",
    )
    embed_precision: Annotated[EmbedPrecision, added_later("float32")] = Field(
        "float32",
        description="Stored embedding values: float32, float16, int8/uint8 (per-dimension "
        "ranges calibrated on the first window of rows), binary/ubinary (1 bit per dimension, "
        "8 per byte), as sentence-transformers' quantize_embeddings.",
    )
    allow_pickle: Annotated[bool, SPEED] = Field(
        False,
        description="Also load pickle (.bin) weights when a model has no safetensors. "
        "Unpickling can run code: only for models you trust.",
    )
    executor: Annotated[ExecutorOptions, SPEED] = Field(
        default_factory=default_options, description=executor_help()
    )
    model_storage_options: Annotated[dict[str, str], SPEED] = Field(
        default_factory=dict,
        exclude=True,  # may hold credentials: never written out with the config
        repr=False,
        description="Storage options for models on object stores (s3://, gs://, abfs://): "
        "a run's --storage-option fills them; else the store's standard credential chain.",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_executor_options(cls, data: Any) -> Any:
        """Accept the CLI's flat spelling (`executor="ray"`, `workers`, `ray_actors`, ...),
        also used by older flow parameters, and nest it under `executor`."""
        return nest_flat_options(dict(data)) if isinstance(data, dict) else data

    @field_validator("classify", mode="before")
    @classmethod
    def _classify_heads(cls, value: Any) -> Any:
        """`NAME=DIR` strings (the CLI's spelling) into heads."""
        return _named_model_heads(
            value,
            "give NAME=DIR (e.g. sentiment=models/sentiment); the unnamed classifier is "
            "--classify-model DIR",
        )

    @field_validator("ner", mode="before")
    @classmethod
    def _ner_heads(cls, value: Any) -> Any:
        """`NAME=DIR` strings (the CLI's spelling) into heads."""
        return _named_model_heads(value, "give NAME=DIR (e.g. people=models/ner)")

    @field_validator("ner_labels", mode="before")
    @classmethod
    def _ner_label_list(cls, value: Any) -> Any:
        """`PER,ORG` (the CLI's spelling, possibly repeated) into a tuple of labels."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        return tuple(
            label.strip() for item in items for label in str(item).split(",") if label.strip()
        )

    @field_validator("zero_shot", mode="before")
    @classmethod
    def _zero_shot_heads(cls, value: Any) -> Any:
        """`LABELS` / `NAME=LABELS` strings (the CLI's spelling) into heads, label files read."""

        def parse(item: str) -> ZeroShotHead:
            name, labels = split_head(item)
            resolved = read_labels(labels)
            try:
                return ZeroShotHead(name=name, labels=resolved)
            except ValueError as e:  # a head's own checks: one line, not a nested error
                raise ConfigError(f"{item!r}: {_first_error(e)}") from e

        return _heads_from_strings(value, parse)

    @model_validator(mode="after")
    def _needs_a_model(self) -> EngineConfig:
        if not (
            self.embed_model or self.classify_model or self.classify or self.zero_shot or self.ner
        ):
            raise ValueError(
                "give at least one of --embed-model / --classify-model / --classify / "
                "--zero-shot / --ner (embed_model / classify_model / classify / zero_shot / ner)"
            )
        return self

    @model_validator(mode="after")
    def _check_backend(self) -> EngineConfig:
        if self.backend == "onnx" and (self.unpadded or self.compile or self.cuda_graphs):
            raise ConfigError(
                "--backend onnx runs the padded, uncompiled path on the CPU: drop "
                "--unpadded/--compile/--cuda-graphs"
            )
        if self.cuda_graphs:
            given = [
                option
                for option, on in (
                    ("--unpadded", self.unpadded),
                    ("--compile", self.compile),
                    ("--quantize int8", self.quantize == "int8"),
                    ("--device cpu", self.device == "cpu"),
                )
                if on
            ]
            if given:
                raise ConfigError(
                    f"--cuda-graphs replays the padded torch path on a GPU: drop {', '.join(given)}"
                )
        return self

    @model_validator(mode="after")
    def _check_heads(self) -> EngineConfig:
        if self.zero_shot and not (self.embed_model or self.zero_shot_model):
            raise ConfigError(
                "--zero-shot needs an embedding model: --embed-model or --zero-shot-model"
            )
        if not self.zero_shot:
            given = [
                "--" + name.replace("_", "-")
                for name in ("zero_shot_template", "zero_shot_min_score", "zero_shot_model")
                if getattr(self, name) is not None
            ]
            if self.zero_shot_temperature != ZERO_SHOT_TEMPERATURE:
                given.append("--zero-shot-temperature")
            if given:
                raise ConfigError(f"{', '.join(given)} need(s) --zero-shot")
        if self.token_stats and not (
            self.embed_model or self.classify_model or self.classify or self.zero_shot_model
        ):
            raise ConfigError(
                "--token-stats counts the tokens of an embedding or classification model; "
                "add --embed-model (or a classifier) beside --ner"
            )
        self._check_embedding_options()
        self._check_emit()
        if not self.ner and (self.ner_labels or self.redact or self.ner_aggregation != "simple"):
            raise ConfigError("--ner-aggregation, --ner-labels and --redact need --ner")
        if self.zero_shot_template is not None and "{}" not in self.zero_shot_template:
            raise ConfigError(
                f"--zero-shot-template {self.zero_shot_template!r} has no {{}} for the label"
            )
        seen: dict[str, str] = {}
        for head in self.heads():
            option = _HEAD_OPTIONS[head.kind] if head.name or head.kind != "classify" else ""
            option = option or "--classify-model"
            if head.name in seen:
                what = (
                    f"head name {head.name!r}" if head.name else "the unnamed head (label, score)"
                )
                raise ConfigError(
                    f"{what} is given twice ({seen[head.name]} and {option}); give each head "
                    "its own NAME= so their columns do not clash"
                )
            seen[head.name] = option
        return self

    def _check_embedding_options(self) -> None:
        """The prompt, dimension and precision options shape `--embed-model`'s column."""
        given = [
            "--" + name.replace("_", "-")
            for name in ("prompt", "prompt_name", "embed_dim")
            if getattr(self, name) is not None
        ] + (["--embed-precision"] if self.embed_precision != "float32" else [])
        if given and not self.embed_model:
            raise ConfigError(f"{', '.join(given)} need(s) --embed-model")
        if self.prompt is not None and self.prompt_name is not None:
            raise ConfigError("give --prompt TEXT or --prompt-name NAME, not both")
        if self.long_text == "window" and (self.prompt or self.prompt_name):
            raise ConfigError(
                "--prompt/--prompt-name with --long-text window is not supported (only the "
                "first window would hold the prompt); use --long-text truncate"
            )
        if self.zero_shot and not self.zero_shot_model and self.embed_precision != "float32":
            raise ConfigError(
                f"--zero-shot scores the float embeddings; with --embed-precision "
                f"{self.embed_precision} give it its own --zero-shot-model"
            )

    def _check_emit(self) -> None:
        """`--emit windows` writes the embedding model's token windows, one row each."""
        if self.emit == "rows":
            return
        if not self.embed_model or self.heads():
            raise ConfigError(
                f"--emit {self.emit} writes one row per token window of --embed-model; it takes "
                "no other model (--classify-model/--classify/--zero-shot/--ner)"
            )
        if self.long_text != "window":
            raise ConfigError(f"--emit {self.emit} needs --long-text window (its token windows)")

    @property
    def emits_windows(self) -> bool:
        """Whether each output row is a token window (`--emit windows` or `rows,windows`)."""
        return self.emit != "rows"

    def heads(self) -> tuple[ClassifierHead | ZeroShotHead | NerHead, ...]:
        """Every head in output order: `--classify-model` (unnamed), each `--classify`, each
        `--zero-shot`, each `--ner`."""
        legacy = (
            (ClassifierHead(name="", model=self.classify_model),) if self.classify_model else ()
        )
        return (*legacy, *self.classify, *self.zero_shot, *self.ner)

    def model_specs(self) -> dict[str, str]:
        """Every model this config runs, by role: `embed`, `classify` (`--classify-model`),
        `classify:NAME` (`--classify`), `zero_shot` (`--zero-shot-model`), `ner:NAME`
        (`--ner`). Roles and specs
        of the one-head case are those of earlier versions (so are their fingerprints)."""
        specs = {"embed": self.embed_model, "classify": self.classify_model}
        specs.update({f"classify:{head.name}": head.model for head in self.classify})
        if self.zero_shot:
            specs["zero_shot"] = self.zero_shot_model
        specs.update({f"ner:{head.name}": head.model for head in self.ner})
        return {role: spec for role, spec in specs.items() if spec}


#: The option that gives each kind of head (for messages).
_HEAD_OPTIONS = {"classify": "--classify", "zero_shot": "--zero-shot", "ner": "--ner"}


def _first_error(error: ValueError) -> str:
    """A pydantic validation error's first message (a plain error's text otherwise)."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(error)


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
