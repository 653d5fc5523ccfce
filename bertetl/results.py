"""Report types every layer shares: per-stage counters, one file's result, a run's report,
a summary row, and the helpers that count labels and sum embeddings and scores as output
batches are written."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.schema import EMBEDDING, ENRICH_ERROR, LABEL, SCORE


@dataclass
class StageCounters:
    """Per-stage figures that reports and flows publish."""

    rows: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: StageCounters) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def padding_waste(self) -> float:
        """Share of computed token positions that were padding."""
        if not self.padded_tokens:
            return 0.0
        return 1.0 - self.real_tokens / self.padded_tokens


@dataclass
class FileResult:
    """What happened to one input file."""

    source: str
    dest: str | None
    rows: int = 0
    rows_failed: int = 0
    rows_reused: int = 0
    rows_truncated: int = 0  # rows inferred whose text the model did not see whole
    #: Input rows read, where output rows are not input rows (`--emit windows`: `rows`
    #: counts the window rows written); None: the same as `rows`.
    rows_in: int | None = None
    seconds: float = 0.0
    #: Real (unpadded) tokens the model stages saw, and the seconds they ran on the device
    #: (GPU or CPU): what a run's cost is reckoned from.
    tokens: int = 0
    device_seconds: float = 0.0
    error: str | None = None
    retryable: bool = False  # the error may pass on a retry (an I/O error, not bad data)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Sums of the output's embedding column and score column, by column (`add_column_sums`).
    embedding_sums: dict[str, ColumnSum] = field(default_factory=dict)
    score_sums: dict[str, ColumnSum] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values; the embedding and score sums are left out (the
        manifests of partitioned runs keep their means)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("embedding_sums", "score_sums")
            and not (f.name == "rows_in" and self.rows_in is None)
        }

    @property
    def rows_read(self) -> int:
        """Input rows this file's output accounts for."""
        return self.rows if self.rows_in is None else self.rows_in


@dataclass
class EnrichReport:
    """The outcome of a run: per-file results and per-stage counters."""

    files: list[FileResult] = field(default_factory=list)
    stages: dict[str, StageCounters] = field(default_factory=dict)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    oom_splits: int = 0
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files if f.error is None)

    @property
    def rows_failed(self) -> int:
        """Rows kept with an `enrich_error` (null, empty or blank text)."""
        return sum(f.rows_failed for f in self.files if f.error is None)

    @property
    def truncated_rows(self) -> int:
        """Rows written whose text the model did not see whole."""
        return sum(f.rows_truncated for f in self.files if f.error is None)

    @property
    def tokens(self) -> int:
        """Real tokens the model stages saw (files that failed included: the work was done)."""
        return sum(f.tokens for f in self.files)

    @property
    def device_seconds(self) -> float:
        """Seconds the model stages ran on the device (GPU or CPU), failed files included."""
        return sum(f.device_seconds for f in self.files)

    @property
    def failures(self) -> dict[str, str]:
        return {f.source: f.error for f in self.files if f.error is not None}

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def merge(self, other: EnrichReport) -> None:
        """Add another report's files and counters (a worker's part of the run)."""
        self.files.extend(other.files)
        for name, counters in other.stages.items():
            self.stages.setdefault(name, StageCounters()).add(counters)
        merge_label_counts(self.label_counts, other.label_counts)
        self.oom_splits += other.oom_splits

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rows_failed": self.rows_failed,
            "rows_truncated": self.truncated_rows,
            "tokens": self.tokens,
            "device_seconds": round(self.device_seconds, 3),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "oom_splits": self.oom_splits,
            "files": [f.to_dict() for f in self.files],
            "failures": self.failures,
            "label_counts": self.label_counts,
            "stages": {
                name: {**vars(c), "padding_waste": round(c.padding_waste, 4)}
                for name, c in self.stages.items()
            },
        }


@dataclass(frozen=True)
class SummaryRow:
    """One line of a flow's summary: a partition (or a file, for the enrich flow)."""

    partition: str
    status: str  # committed, skipped, failed, orphan
    reason: str = ""
    rows: int = 0
    inferred: int = 0
    reused: int = 0
    failed: int = 0
    truncated: int = 0
    seconds: float = 0.0
    tokens: int = 0
    device_seconds: float = 0.0
    labels: str = ""
    #: Why the partition's drift is flagged (`bertetl.reports.drift`); empty when it is not,
    #: None when drift was not computed.
    drift: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_labels(
    batch: pa.RecordBatch | pa.Table, columns: list[str], counts: dict[str, dict[str, int]]
) -> None:
    """Add the batch's label counts (nulls left out) into `counts`, by column."""
    for column in columns:
        tally = counts.setdefault(column, {})
        for item in pc.value_counts(batch.column(column)).to_pylist():
            if item["values"] is not None:
                tally[item["values"]] = tally.get(item["values"], 0) + item["counts"]


def merge_label_counts(into: dict[str, dict[str, int]], counts: dict[str, dict[str, int]]) -> None:
    """Add `counts` (label counts by column) into `into`, keeping labels sorted."""
    for column, tally in counts.items():
        merged = into.setdefault(column, {})
        for label, count in tally.items():
            merged[label] = merged.get(label, 0) + count
        into[column] = dict(sorted(merged.items()))


@dataclass
class ColumnSum:
    """A numeric column's sum (float64, one value per vector element; one element for a
    scalar column) over the `count` rows that have a value. Sums of batches, files, parts
    and partitions add up, so the mean of several is their exact count-weighted mean."""

    count: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, other: ColumnSum) -> None:
        if not other.count:
            return
        self.total = other.total.copy() if not self.count else self.total + other.total
        self.count += other.count

    def add_rows(self, values: np.ndarray) -> None:
        """Add the rows of `values` (rows x elements)."""
        if not len(values):
            return
        total = values.sum(axis=0, dtype=np.float64)
        self.total = total if not self.count else self.total + total
        self.count += len(values)

    def mean(self) -> np.ndarray | None:
        """The mean as float32, or None when no row had a value."""
        return (self.total / self.count).astype(np.float32) if self.count else None


@dataclass(frozen=True)
class MeanColumns:
    """The output columns whose means manifests keep: the embedding and the score."""

    embeddings: tuple[str, ...] = ()
    scores: tuple[str, ...] = ()

    @classmethod
    def of(cls, schema: pa.Schema, error_column: str, label_columns: list[str]) -> MeanColumns:
        """The output's embedding column (named with the error column's prefix, a fixed-size
        list of floats) and the score column of each label column, where `schema` has them.

        Found by name, so the local and Ray executors pick the same columns: an input
        column with the embedding column's name and type is averaged even when the run does
        not embed (it cannot hold the run's own embedding then)."""
        prefix = error_column.removesuffix(ENRICH_ERROR)
        names = set(schema.names)
        embeddings = tuple(
            name
            for name in (prefix + EMBEDDING,)
            if name in names and _is_float_vector(schema.field(name).type)
        )
        scores = tuple(
            name
            for name in (label.removesuffix(LABEL) + SCORE for label in label_columns)
            if name in names and pa.types.is_floating(schema.field(name).type)
        )
        return cls(embeddings, scores)


def _is_float_vector(dtype: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(dtype) and pa.types.is_floating(dtype.value_type)


def _valid_rows(column: pa.Array | pa.ChunkedArray) -> Iterator[np.ndarray]:
    """The non-null rows of a float column or a fixed-size list of floats, a matrix (rows x
    elements) per chunk, read from the Arrow buffers (no Python objects)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        rows = len(chunk) - chunk.null_count
        if not rows:
            continue
        if pa.types.is_fixed_size_list(chunk.type):
            values = chunk.flatten()  # the elements of the non-null rows
        else:
            values = pc.drop_null(chunk) if chunk.null_count else chunk
        yield values.to_numpy(zero_copy_only=False).reshape(rows, -1)


def add_column_sums(
    batch: pa.RecordBatch | pa.Table, columns: MeanColumns, result: FileResult
) -> None:
    """Add the batch's embeddings and scores (null rows left out) into `result`'s sums."""
    for names, sums in (
        (columns.embeddings, result.embedding_sums),
        (columns.scores, result.score_sums),
    ):
        for name in names:
            column_sum = sums.setdefault(name, ColumnSum())
            for rows in _valid_rows(batch.column(name)):
                column_sum.add_rows(rows)


def merge_column_sums(into: dict[str, ColumnSum], sums: dict[str, ColumnSum]) -> None:
    """Add `sums` (by column) into `into`."""
    for name, column_sum in sums.items():
        into.setdefault(name, ColumnSum()).add(column_sum)
