"""`write_output`: the one loop that writes an output file through its sink and counts it.

Every executor writes through it (the local pipeline's `run_file`, Ray's commit tasks), so every
`FileResult` carries the same counts whichever executor made it: failed rows, label counts, and
the embedding and score sums that manifests and drift read. A new executor calls it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pyarrow as pa

from bertetl.io.sink import OutputSink
from bertetl.results import FileResult, MeanColumns, add_column_sums, count_labels


@dataclass(frozen=True)
class OutputCounts:
    """What `write_output` counts in an output of one schema: its error column (a row with
    an error is a failed row), its single-label columns and the columns whose means it sums."""

    error_column: str
    label_columns: tuple[str, ...]
    means: MeanColumns

    @classmethod
    def of(cls, schema: pa.Schema, error_column: str, label_columns: list[str]) -> OutputCounts:
        return cls(
            error_column, tuple(label_columns), MeanColumns.of(schema, error_column, label_columns)
        )


def write_output(
    batches: Iterable[pa.RecordBatch],
    sink: OutputSink,
    counts: OutputCounts,
    result: FileResult,
    on_batch: Callable[[pa.RecordBatch], None] | None = None,
) -> FileResult:
    """Open `sink`, write every batch through it, counting into `result`, and commit; on any
    error the sink is aborted (nothing of the output appears) and the error raised.
    `result.rows` is the rows committed. `on_batch` sees each batch before it is written."""
    labels = list(counts.label_columns)
    sink.open()
    try:
        for batch in batches:
            if on_batch is not None:
                on_batch(batch)
            sink.write(batch)
            result.rows_failed += batch.num_rows - batch.column(counts.error_column).null_count
            count_labels(batch, labels, result.label_counts)
            add_column_sums(batch, counts.means, result)
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    result.rows = sink.rows
    return result
