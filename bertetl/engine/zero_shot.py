"""Zero-shot labels from an embedding model: no training, no extra forward pass over rows.

Each label's vector is the normalised mean of its descriptions' embeddings (computed once, in
`setup()`, by the same model and pooling as the rows). A row's scores are the softmax of its
embedding's cosine similarities to the label vectors, divided by a temperature. The stage reads
the row embeddings from a column another stage wrote: the `--embed-model`'s own `embedding`
column when it is the zero-shot model (the second pass costs a matrix product), else an
internal column of an `EmbedStage` that the pipeline runs for it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from bertetl.config import EngineConfig, ZeroShotHead
from bertetl.engine.embed import EmbedStage
from bertetl.engine.heads import LabelColumns, head_prefix
from bertetl.engine.long_text import LongTextOptions
from bertetl.engine.tokenize import TokenizeStage
from bertetl.results import StageCounters


def description_texts(head: ZeroShotHead, template: str | None) -> list[list[str]]:
    """Each label's texts to embed: its descriptions, through `template` when given
    (`{}` stands for the description)."""
    return [
        [template.replace("{}", d) if template else d for d in label.descriptions]
        for label in head.labels
    ]


def label_vectors(description_vectors: list[np.ndarray]) -> np.ndarray:
    """Per label, the normalised mean of its descriptions' vectors (labels x dim, float64)."""
    means = np.stack([vectors.astype(np.float64).mean(axis=0) for vectors in description_vectors])
    return means / np.linalg.norm(means, axis=1, keepdims=True).clip(min=1e-12)


def zero_shot_probabilities(
    embeddings: np.ndarray, vectors: np.ndarray, temperature: float
) -> np.ndarray:
    """softmax(cosine(row, label) / temperature) per row (rows x labels, float64)."""
    rows = embeddings.astype(np.float64)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12)
    logits = rows @ vectors.T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-size-list embedding column as (rows x dim float matrix, null mask); null
    rows are zeros. Read from the Arrow buffers, no Python objects."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    values = column.values.to_numpy(zero_copy_only=False)
    start = column.offset * dim
    matrix = values[start : start + len(column) * dim].reshape(len(column), dim)
    missing = column.is_null().to_numpy(zero_copy_only=False)
    return np.where(missing[:, None], 0.0, np.nan_to_num(matrix)), missing


class ZeroShotStage:
    """Appends a zero-shot head's `label`, `score` (and `scores`) from an embedding column.

    `encoder` is the stage that writes `embedding_column`; the label vectors come from its
    model (loaded by its own `setup()`, which runs first), so label and row vectors share
    model, pooling and max length.
    """

    kind = "zero_shot"
    oom_splits = 0

    def __init__(
        self, head: ZeroShotHead, encoder: EmbedStage, embedding_column: str, config: EngineConfig
    ) -> None:
        """`config` gives the `--zero-shot-*` settings, `--scores`, `--prefix` and
        `--max-length`."""
        self.name = f"zero_shot:{head.name}" if head.name else "zero_shot"
        self.head = head
        self.encoder = encoder
        self.embedding_column = embedding_column
        self.template = config.zero_shot_template
        self.temperature = config.zero_shot_temperature
        self.max_length = config.max_length
        self.label_columns = LabelColumns(
            head_prefix(config.prefix, head.name),
            head.label_names(),
            include_scores=config.include_scores,
            min_score=config.zero_shot_min_score,
        )
        self.counters = StageCounters()
        self.vectors: np.ndarray | None = None

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.embedding_column,)

    @property
    def produces(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields())

    def fields(self) -> list[pa.Field]:
        return self.label_columns.fields()

    def setup(self) -> None:
        """Embed the label descriptions with the encoder's model (after its `setup()`),
        tokenized as the rows are (first token window, the same max length)."""
        texts = description_texts(self.head, self.template)
        tokenizer = TokenizeStage(
            self.encoder.model_dir, "", "", "", self.max_length, LongTextOptions()
        )
        tokenizer.setup()
        flat = [text for label in texts for text in label]
        vectors = self.encoder.encode_ids(tokenizer.encode(flat))
        tokenizer.teardown()
        bounds = np.cumsum([0, *(len(label) for label in texts)])
        self.vectors = label_vectors(
            [vectors[start:end] for start, end in itertools.pairwise(bounds)]
        )

    def teardown(self) -> None:
        self.vectors = None

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if self.vectors is None:
            raise RuntimeError("ZeroShotStage used before setup()")
        for batch in batches:
            started = time.perf_counter()
            embeddings, missing = embedding_matrix(batch.column(self.embedding_column))
            outputs = zero_shot_probabilities(embeddings, self.vectors, self.temperature)
            for field, column in zip(
                self.fields(), self.label_columns.columns(outputs, missing), strict=True
            ):
                batch = batch.append_column(field, column)
            self.counters.rows += batch.num_rows
            self.counters.batches += 1
            self.counters.seconds += time.perf_counter() - started
            yield batch
