"""The embedding stage: pooled sentence vectors as the model's sentence-transformers modules
make them (`engine.pooling`), cut to `--embed-dim` (Matryoshka) and stored at
`--embed-precision` (sentence-transformers' `quantize_embeddings` meaning)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bertetl.engine.encoders import EncoderStage
from bertetl.engine.pooling import EmbeddingHead, PoolingSpec, pool, read_modules
from bertetl.errors import ModelError
from bertetl.schema import EMBEDDING, WINDOW_OUTPUTS_PREFIX

#: Each `--embed-precision` and the Arrow type of one value of its vectors. The binary ones
#: pack 8 dimensions per byte (numpy's `packbits`, big-endian bit order); int8 and binary are
#: offset by -128 from their unsigned forms, as sentence-transformers does.
PRECISION_TYPES = {
    "float32": pa.float32(),
    "float16": pa.float16(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "binary": pa.int8(),
    "ubinary": pa.uint8(),
}
#: Precisions whose per-dimension ranges are calibrated on the first window of rows.
CALIBRATED = ("int8", "uint8")
#: sentence-transformers' prompts file in a model folder.
PROMPTS_FILE = "config_sentence_transformers.json"


@dataclass(frozen=True)
class EmbedOptions:
    """What of the embedding is written: its dimensions and its precision."""

    embed_dim: int | None = None
    precision: str = "float32"
    #: int8/uint8 ranges (2 x dim: per-dimension minimum, maximum); None: calibrated on the
    #: first window of rows.
    ranges: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    #: `--emit windows`: also each token window's own embedding (`window_outputs_column`).
    windows: bool = False


def model_prompts(model_dir: Path) -> tuple[dict[str, str], str | None]:
    """The model's named prompts and its default prompt's name (its `PROMPTS_FILE`)."""
    path = Path(model_dir) / PROMPTS_FILE
    if not path.is_file():
        return {}, None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not valid JSON ({e}); fix or replace it") from e
    prompts = config.get("prompts") or {}
    return {str(k): str(v) for k, v in prompts.items()}, config.get("default_prompt_name")


def resolve_prompt(model_dir: Path, prompt: str | None, prompt_name: str | None) -> str:
    """The text put before each row, as sentence-transformers' `encode` chooses it: `prompt`,
    else the model's prompt named `prompt_name`, else its `default_prompt_name`'s, else none."""
    if prompt is not None:
        return prompt
    prompts, default = model_prompts(model_dir)
    name = prompt_name if prompt_name is not None else default
    if name is None:
        return ""
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise ModelError(
            f"{model_dir}: no prompt named {name!r} in {PROMPTS_FILE} (its prompts: {known})"
        )
    return prompts[name]


def check_one_calibration(precision: str, model_processes: int | None) -> None:
    """Refuse int8/uint8 where several model processes (None: a cluster's actors) would each
    calibrate their own ranges, so rows of one run would be bucketed differently."""
    if precision in CALIBRATED and (model_processes is None or model_processes > 1):
        where = f"{model_processes} workers" if model_processes else "Ray actors"
        raise ModelError(
            f"--embed-precision {precision} calibrates its ranges in one model process; "
            f"{where} would each calibrate their own: run it with one worker (--workers 1)"
        )


def quantization_ranges(embeddings: np.ndarray) -> np.ndarray:
    """Per-dimension minimum and maximum (2 x dim), as `quantize_embeddings` calibrates."""
    if len(embeddings) < 2:
        raise ModelError(
            "--embed-precision int8/uint8 calibrates its ranges on the first window of rows, "
            f"which has {len(embeddings)} embedded row(s); give a window of at least 2"
        )
    return np.vstack((embeddings.min(axis=0), embeddings.max(axis=0)))


def quantize(embeddings: np.ndarray, precision: str, ranges: np.ndarray | None) -> np.ndarray:
    """`embeddings` (float32, rows x dim) at `precision`, as sentence-transformers'
    `quantize_embeddings` does (float16: a plain cast)."""
    if precision == "float32":
        return embeddings.astype(np.float32, copy=False)
    if precision == "float16":
        return embeddings.astype(np.float16)
    if precision in ("int8", "uint8"):
        assert ranges is not None
        starts = ranges[0].astype(np.float32)
        steps = (ranges[1].astype(np.float32) - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1)
    return packed if precision == "ubinary" else (packed - 128).astype(np.int8)


def stored_width(dim: int, precision: str) -> int:
    """Values per stored vector: `dim`, or bytes of packed bits for the binary precisions."""
    return (dim + 7) // 8 if precision.endswith("binary") else dim


class EmbedStage(EncoderStage):
    """Appends `embedding` (fixed_size_list<float32, dim>, or the `--embed-precision` type)
    pooled as the model's modules say."""

    name = "embed"
    kind = "embed"

    def __init__(self, *args: Any, options: EmbedOptions | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = options or EmbedOptions()
        self.pooling: PoolingSpec = read_modules(self.model_dir)
        self.head: EmbeddingHead | None = None
        self.ranges = np.array(self.options.ranges) if self.options.ranges else None
        dim = self.options.embed_dim
        if dim is not None and dim > self._model_dim():
            raise ModelError(
                f"--embed-dim {dim} is above {self.model_dir}'s {self._model_dim()} dimensions"
            )

    def setup(self) -> None:
        self.pooling = read_modules(self.model_dir)
        if self.runtime.unpadded and (
            self.pooling.mode in ("weightedmean", "lasttoken") or not self.pooling.include_prompt
        ):
            raise ModelError(
                f"--unpadded pools by mean, cls, max or mean_sqrt_len over the whole text; "
                f"{self.model_dir} pools by {self.pooling.mode}"
                f"{'' if self.pooling.include_prompt else ' without its prompt'}: leave it out"
            )
        super().setup()
        self.head = EmbeddingHead(self.pooling, self.device)

    @property
    def width(self) -> int:
        return int(self._model_dim())

    def _model_dim(self) -> int:
        """The model's output width: its last Dense layer's, else its hidden size."""
        if self.pooling.dense:
            return self.pooling.dense[-1].out_features
        if self.model is not None:
            return int(self.model.config.hidden_size)
        from transformers import AutoConfig  # its attribute maps: DistilBERT's `dim`, ...

        return int(AutoConfig.from_pretrained(self.model_dir, local_files_only=True).hidden_size)

    def _dim(self) -> int:
        """Dimensions written: `--embed-dim`, else the model's."""
        return self.options.embed_dim or self._model_dim()

    def fields(self) -> list[pa.Field]:
        precision = self.options.precision
        width = stored_width(self._dim(), precision)
        return [pa.field(self.prefix + EMBEDDING, pa.list_(PRECISION_TYPES[precision], width))]

    def _forward(self, input_ids: Any, attention_mask: Any) -> Any:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = pool(hidden, attention_mask, self._pool_spec(), self.prompt_length)
        return self._head(pooled)

    def _forward_packed(self, input_ids: Any, position_ids: Any, starts: Any, longest: int) -> Any:
        from bertetl.engine.unpadded import packed_forward, pool_packed

        hidden = packed_forward(self.model, input_ids, position_ids, starts, longest)
        hidden = hidden.last_hidden_state
        return self._head(pool_packed(hidden[0], starts, self._pool_spec()))

    def _pool_spec(self) -> PoolingSpec:
        """Pooling alone: Dense layers and normalization follow in `_head`."""
        return replace(self.pooling, normalize=False)

    def _head(self, pooled: Any) -> Any:
        """Dense layers, then the model's Normalize, except for long texts' windows, which
        are averaged first (`_finish_rows` normalizes them)."""
        assert self.head is not None
        return self.head(pooled, normalize=self.pooling.normalize and not self.windowed)

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Sentence vectors (float32, rows x dim) of token id sequences (special tokens
        included), pooled and normalised as the model's config says, in token-budget
        batches; after `setup()`. For texts the pipeline does not write (zero-shot label
        descriptions): the stage's counters do not count them."""
        import torch

        lengths = np.array([len(row) for row in ids], dtype=np.int64)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter((i for row in ids for i in row), np.int64, int(offsets[-1]))
        outputs = np.zeros((len(ids), self.width), dtype=np.float32)
        self.prompt_length = 0
        for rows in self._plan(lengths):
            with torch.inference_mode():
                outputs[rows] = self._pass(offsets, values, rows)[0]
        return self._finish_rows(outputs)

    def _finish_rows(self, outputs: np.ndarray) -> np.ndarray:
        """Per-row vectors: long texts' windows normalized once combined; then cut to
        `--embed-dim` and re-normalized when the model normalizes."""
        normalize = self.windowed and self.pooling.normalize
        dim = self.options.embed_dim
        if dim is not None and dim < outputs.shape[1]:
            outputs = np.ascontiguousarray(outputs[:, :dim])
            normalize = self.pooling.normalize
        if not normalize:
            return outputs
        import torch

        return torch.nn.functional.normalize(torch.from_numpy(outputs), p=2, dim=1).numpy()

    @property
    def window_outputs_column(self) -> str:
        """The internal column of each row's windows' own embeddings (`--emit windows`)."""
        return WINDOW_OUTPUTS_PREFIX + self.fields()[0].name

    def _append_window_outputs(
        self, batch: pa.RecordBatch, outputs: np.ndarray, windows: np.ndarray
    ) -> pa.RecordBatch:
        """With `options.windows`: each window's embedding as a sentence-transformers model
        embeds that window alone (pooled, Dense, Normalize, `--embed-dim`, precision), as
        `list<embedding>` per row; quantized with the rows' ranges."""
        if not self.options.windows:
            return batch
        vectors = self._finish_rows(outputs)  # windowed: each normalized as a row would be
        (column,) = self._columns(vectors, np.zeros(len(vectors), dtype=bool))
        first = np.zeros(len(windows) + 1, dtype=np.int32)
        np.cumsum(windows, out=first[1:])
        lists = pa.ListArray.from_arrays(pa.array(first), column)
        return batch.append_column(self.window_outputs_column, lists)

    def _columns(self, outputs: np.ndarray, missing: np.ndarray) -> list[pa.Array]:
        precision = self.options.precision
        if precision in ("int8", "uint8") and self.ranges is None:
            self.ranges = quantization_ranges(outputs[~missing])
        stored = quantize(outputs, precision, self.ranges)
        values = pa.array(stored.reshape(-1), type=PRECISION_TYPES[precision])
        return [pa.FixedSizeListArray.from_arrays(values, stored.shape[1], mask=pa.array(missing))]
