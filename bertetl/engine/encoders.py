"""Embedding and classification forward passes: device, dtype, pooling, OOM splitting."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.engine.batching import (
    graph_shape,
    graph_width,
    pack_batch,
    pad_batch,
    plan_batches,
)
from bertetl.engine.heads import LabelColumns, check_sequence_classifier
from bertetl.engine.heap import pin_mmap_threshold
from bertetl.engine.long_text import combine_windows
from bertetl.engine.oom import forward_splitting
from bertetl.engine.pooling import pool as pool  # named here for earlier importers
from bertetl.errors import ModelError
from bertetl.results import StageCounters


def resolve_device(device: str) -> Any:
    """`auto` = cuda when available, else cpu; `cuda` without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


#: Default token budgets: CPU batches stay small (cache-friendly, less padding; measured on
#: MiniLM, 2 cores: 4096 gives 79 rows/s, 8192 65, 16384 61); GPUs need large ones to fill.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 32768}


def resolve_dtype(dtype: str, device: Any) -> Any:
    """`auto` = bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization (per-channel weights) of the Linear layers, CPU only.

    The feed-forward down-projections (`*.output.dense` outside attention) stay fp32: their
    inputs carry outlier activations, and quantizing them costs most of the accuracy
    (MiniLM on real reviews: cosine to fp32 mean 0.972 with them, 0.986 without).
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not (name.endswith("output.dense") and "attention" not in name)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the kernels are current
        return quantize_dynamic(
            model, dict.fromkeys(names, per_channel_dynamic_qconfig), dtype=torch.qint8
        )


def check_weights(model_dir: Path, allow_pickle: bool) -> bool:
    """Whether `model_dir` has safetensors weights; without, an error unless `allow_pickle`."""
    has_safetensors = any(Path(model_dir).glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise ModelError(f"{model_dir} has no safetensors weights (pickle needs --allow-pickle)")
    return has_safetensors


def load_model(
    model_dir: Path, kind: str, device: Any, dtype: Any, allow_pickle: bool = False
) -> Any:
    """Load a local model (`kind`: embed, classify or ner) with no remote code, SDPA attention,
    in eval mode: safetensors weights, or pickle weights only with `allow_pickle` and no
    safetensors present."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    cls = {
        "classify": transformers.AutoModelForSequenceClassification,
        "ner": transformers.AutoModelForTokenClassification,
    }.get(kind, transformers.AutoModel)
    has_safetensors = check_weights(model_dir, allow_pickle)
    kwargs = dict(
        local_files_only=True,
        use_safetensors=has_safetensors,
        trust_remote_code=False,
        dtype=dtype,
    )
    try:
        try:
            model = cls.from_pretrained(model_dir, attn_implementation="sdpa", **kwargs)
        except ValueError as e:
            if "sdpa" not in str(e).lower():
                raise
            model = cls.from_pretrained(model_dir, attn_implementation="eager", **kwargs)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise ModelError(f"cannot load model {model_dir}: {e}") from e
    except RuntimeError as e:  # transformers' weight checks, e.g. a shape mismatch
        if "mismatched" in str(e):
            raise ModelError(
                f"cannot load model {model_dir}: some of its weights have other shapes than "
                "its config.json gives them (a config edited, or weights from another model)"
            ) from e
        raise ModelError(f"cannot load model {model_dir}: {e}") from e
    return model.to(device).eval()


@dataclass(frozen=True)
class ModelRuntime:
    """How a model stage runs: where, in which precision, and how big its batches are."""

    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    backend: str = "torch"
    batch_tokens: int | None = None
    max_batch_rows: int = 256
    allow_pickle: bool = False
    unpadded: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    @classmethod
    def from_config(cls, config: EngineConfig) -> ModelRuntime:
        return cls(
            device=config.device,
            dtype=config.dtype,
            quantize=config.quantize,
            backend=config.backend,
            batch_tokens=config.batch_tokens,
            max_batch_rows=config.max_batch_rows,
            allow_pickle=config.allow_pickle,
            unpadded=config.unpadded,
            compile=config.compile,
            cuda_graphs=config.cuda_graphs,
        )


def runtime_device(runtime: ModelRuntime) -> Any:
    """The device a model stage runs on (`resolve_device`); `--quantize int8` and
    `--backend onnx` run on the CPU only, so a CUDA device for them is an error, and
    `--cuda-graphs` on CUDA only."""
    onnx = runtime.backend == "onnx"
    if onnx and runtime.device == "cuda":
        raise ModelError("--backend onnx runs on the CPU only; use --device cpu")
    device = resolve_device(runtime.device)
    if onnx and device.type != "cpu":
        raise ModelError("--backend onnx runs on the CPU only; use --device cpu")
    if runtime.quantize == "int8" and device.type != "cpu":
        raise ModelError("--quantize int8 runs on the CPU only; use --device cpu")
    if runtime.cuda_graphs and device.type != "cuda":
        raise ModelError(f"--cuda-graphs needs a CUDA device; this run's device is {device}")
    return device


def load_runtime_model(model_dir: Path, kind: str, device: Any, runtime: ModelRuntime) -> Any:
    """The model a stage runs (`kind`: embed, classify or ner) on `device` (`runtime_device`):
    `load_model`'s, switched to packed attention with `unpadded` (embed and classify only),
    int8-quantized with `quantize`, compiled with `compile`; or with `backend` onnx an ONNX
    Runtime session in its place (exported once and cached: `engine.onnx_backend`)."""
    import torch

    if runtime.backend != "onnx":
        dtype = resolve_dtype(runtime.dtype, device)
        model = load_model(model_dir, kind, device, dtype, allow_pickle=runtime.allow_pickle)
        if runtime.unpadded and kind != "ner":
            from bertetl.engine.unpadded import use_unpadded

            use_unpadded(model, model_dir)
        if runtime.quantize == "int8":
            model = quantize_int8(model)
        return compile_encoder(model) if runtime.compile else model
    if runtime.dtype not in ("auto", "float32"):
        raise ModelError(
            f"--backend onnx runs float32 models (int8 with --quantize int8), not --dtype "
            f"{runtime.dtype}; leave --dtype auto"
        )
    from bertetl.engine.onnx_backend import onnx_model

    check_weights(model_dir, runtime.allow_pickle)
    return onnx_model(
        model_dir,
        kind,
        runtime.quantize,
        lambda: load_model(model_dir, kind, device, torch.float32, runtime.allow_pickle),
    )


def compile_encoder(model: Any) -> Any:
    """`torch.compile` (dynamic shapes) the model's encoder, which does nearly all the work:
    the model itself when it is one, else its base model in place (a head model keeps its
    type, config and head, and the unpadded path, which calls the encoder directly, runs the
    compiled one too)."""
    import torch

    base = model.base_model
    if base is model:
        return torch.compile(model, dynamic=True)
    setattr(model, model.base_model_prefix, torch.compile(base, dynamic=True))
    return model


class EncoderStage:
    """Shared machinery of the model stages: token-budget batches through one model.

    Subclasses say how a forward pass becomes per-row outputs (`_forward`) and how those
    become Arrow columns (`_columns`). The model loads in `setup()`, never at import.
    """

    name = "infer"
    kind = "embed"

    def __init__(
        self,
        model_dir: Path,
        tokens_column: str,
        prefix: str = "",
        runtime: ModelRuntime | None = None,
        windowed: bool = False,
    ) -> None:
        runtime = runtime or ModelRuntime()
        self.runtime = runtime
        #: Long texts come as several token windows whose outputs are combined per row.
        self.windowed = windowed
        self.model_dir = Path(model_dir)
        self.tokens_column = tokens_column
        self.pad_token_id = 0  # from the model's config in setup(); masked out either way
        self.prefix = prefix
        self.batch_tokens = runtime.batch_tokens
        #: Padded tokens per batch: `batch_tokens`, else the device's default (in `setup`).
        self.token_budget: int = runtime.batch_tokens or 0
        self.max_batch_rows = runtime.max_batch_rows
        self.counters = StageCounters()
        self.oom_splits = 0
        #: Leading tokens of each row of the current batch that are its prompt's.
        self.prompt_length = 0
        self.model: Any = None
        self.device: Any = None
        #: `engine.graphs.CudaGraphs` over `_forward` with `cuda_graphs` (set in `setup`).
        self.graphs: Any = None

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.tokens_column,)

    @property
    def produces(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields())

    def fields(self) -> list[pa.Field]:
        raise NotImplementedError

    def setup(self) -> None:
        self.device = runtime_device(self.runtime)
        pin_mmap_threshold(self.device.type)  # large blocks back to the OS (see engine.heap)
        if self.batch_tokens is None:
            self.token_budget = DEFAULT_BATCH_TOKENS.get(self.device.type, 4096)
        self.model = load_runtime_model(self.model_dir, self.kind, self.device, self.runtime)
        self.pad_token_id = int(getattr(self.model.config, "pad_token_id", None) or 0)
        if self.runtime.cuda_graphs:
            from bertetl.engine.graphs import CudaGraphs

            # `_forward` looked up at each call, as the eager path does (bench.host swaps it)
            self.graphs = CudaGraphs(lambda ids, mask: self._forward(ids, mask), self.device)

    def teardown(self) -> None:
        self.model = self.graphs = None
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _forward(self, input_ids: Any, attention_mask: Any) -> Any:
        raise NotImplementedError

    def _forward_packed(self, input_ids: Any, position_ids: Any, starts: Any, longest: int) -> Any:
        """Per-text outputs of one packed row (`engine.unpadded`)."""
        raise NotImplementedError

    def _columns(self, outputs: np.ndarray, missing: np.ndarray) -> list[pa.Array]:
        raise NotImplementedError

    def _to_device(self, array: np.ndarray) -> Any:
        """Host array to the model's device; via pinned memory and an async copy on CUDA."""
        import torch

        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _infer(self, offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`_pass`, counted in the stage's counters."""
        result, real, padded = self._pass(offsets, values, rows)
        self.counters.batches += 1
        self.counters.real_tokens += real
        self.counters.padded_tokens += padded
        return result

    def _pass(
        self, offsets: np.ndarray, values: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, int, int]:
        """One forward pass over `rows`, padded or (`unpadded`) packed: the outputs (float32,
        rows x width), the real tokens and the positions computed."""
        if self.runtime.unpadded:
            packed = pack_batch(offsets, values, rows)
            longest = int(np.diff(packed[2]).max())
            input_ids, position_ids, starts = (self._to_device(a) for a in packed)
            out = self._forward_packed(input_ids, position_ids, starts, longest)
            real = padded = packed[0].size
        else:
            shape = self._graph_shape(offsets, rows) if self.graphs is not None else None
            ids, mask = pad_batch(offsets, values, rows, self.pad_token_id, shape)
            input_ids, attention_mask = (self._to_device(a) for a in (ids, mask))
            forward = self.graphs if self.graphs is not None else self._forward
            out = forward(input_ids, attention_mask)[: len(rows)]
            real = int(mask[: len(rows)].sum())
            padded = int(mask.size)
        return out.float().cpu().numpy(), real, padded

    def _graph_shape(self, offsets: np.ndarray, rows: np.ndarray) -> tuple[int, int]:
        """The padded shape of a batch replayed from a CUDA graph (`batching.graph_shape`)."""
        longest = int((offsets[rows + 1] - offsets[rows]).max())
        return graph_shape(
            len(rows), longest, self.token_budget, self.max_batch_rows, self._positions()
        )

    def _positions(self) -> int | None:
        """The model's position limit, which a padded width must not pass."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def _plan(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Token-budget batches of rows (`plan_batches`); with CUDA graphs planned on the
        lengths their batches are padded to, so a padded batch keeps within the budget."""
        if self.graphs is not None:
            lengths = graph_width(lengths, self._positions())
        return plan_batches(lengths, self.token_budget, self.max_batch_rows)

    def _run_rows(self, offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Forward one batch; on out-of-memory split it (`engine.oom.forward_splitting`)."""
        return forward_splitting(self, lambda part: self._infer(offsets, values, part), rows)

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            started = time.perf_counter()
            tokens = batch.column(self.tokens_column)  # row -> token windows -> ids
            row_offsets = tokens.offsets.to_numpy()
            windows = np.diff(row_offsets)
            sequences = tokens.values
            offsets = sequences.offsets.to_numpy()
            values = sequences.values.to_numpy()
            first = int(row_offsets[0])
            lengths = np.diff(offsets)[first : int(row_offsets[-1])]
            outputs = np.zeros((len(lengths), self.width), dtype=np.float32)
            self.prompt_length = self._token_metadata(batch, b"prompt_tokens")
            for batch_rows in self._plan(lengths):
                outputs[batch_rows] = self._run_rows(offsets, values, batch_rows + first)
            window_outputs = outputs
            if windows.max(initial=0) > 1:
                outputs = combine_windows(outputs, windows, lengths - self._special(batch))
            else:
                rows = np.zeros((batch.num_rows, outputs.shape[1]), dtype=np.float32)
                rows[windows == 1] = outputs
                outputs = rows
            outputs = self._finish_rows(outputs)
            for field, column in zip(
                self.fields(), self._columns(outputs, windows == 0), strict=True
            ):
                batch = batch.append_column(field, column)
            batch = self._append_window_outputs(batch, window_outputs, windows)
            self.counters.rows += batch.num_rows
            self.counters.seconds += time.perf_counter() - started
            yield batch

    def _append_window_outputs(
        self, batch: pa.RecordBatch, outputs: np.ndarray, windows: np.ndarray
    ) -> pa.RecordBatch:
        """`batch`, plus each token window's own output where the stage writes window rows
        (`outputs`: one per window, before they are combined per row); none here."""
        return batch

    def _special(self, batch: pa.RecordBatch) -> int:
        """Special tokens per window (the tokenize stage notes them on its column)."""
        return self._token_metadata(batch, b"special_tokens")

    def _token_metadata(self, batch: pa.RecordBatch, key: bytes) -> int:
        """A count the tokenize stage notes on its column (`special_tokens`, and
        `prompt_tokens`: the leading tokens of each row that are its prompt's)."""
        metadata = batch.schema.field(self.tokens_column).metadata or {}
        return int(metadata.get(key, b"0"))

    def _finish_rows(self, outputs: np.ndarray) -> np.ndarray:
        """Per-row outputs after the windows are combined (embeddings normalize here)."""
        return outputs

    @property
    def width(self) -> int:
        raise NotImplementedError


class ClassifyStage(EncoderStage):
    """Appends `label`, `score` and optionally `scores`; multi-label models add `labels`
    (each after `prefix`: a named head's prefix ends in `NAME_`)."""

    name = "classify"
    kind = "classify"

    def __init__(
        self,
        *args: Any,
        include_scores: bool = False,
        threshold: float = 0.5,
        option: str = "--classify-model",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        config = check_sequence_classifier(self.model_dir, option)
        id2label = config.get("id2label") or {}
        self.labels = [str(id2label.get(str(i), i)) for i in range(len(id2label))]
        self.multi_label = config.get("problem_type") == "multi_label_classification"
        self.label_columns = LabelColumns(
            self.prefix, self.labels, self.multi_label, include_scores, threshold
        )

    @property
    def width(self) -> int:
        return len(self.labels)

    def fields(self) -> list[pa.Field]:
        return self.label_columns.fields()

    def _forward(self, input_ids: Any, attention_mask: Any) -> Any:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return self._probabilities(logits)

    def _forward_packed(self, input_ids: Any, position_ids: Any, starts: Any, longest: int) -> Any:
        from bertetl.engine.unpadded import classify_packed

        logits = classify_packed(self.model, input_ids, position_ids, starts, longest)
        return self._probabilities(logits)

    def _probabilities(self, logits: Any) -> Any:
        logits = logits.float()
        return logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)

    def _columns(self, outputs: np.ndarray, missing: np.ndarray) -> list[pa.Array]:
        return self.label_columns.columns(outputs, missing)
