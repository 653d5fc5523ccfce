"""Report types every layer shares: per-stage counters, one file's result, a run's report,
a summary row, and label-count helpers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


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
    seconds: float = 0.0
    error: str | None = None
    retryable: bool = False  # the error may pass on a retry (an I/O error, not bad data)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)


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
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "oom_splits": self.oom_splits,
            "files": [vars(f) for f in self.files],
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
    labels: str = ""

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
