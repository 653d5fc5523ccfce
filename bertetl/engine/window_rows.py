"""`--emit windows`: one output row per token window of a row, instead of one per row.

The model stages run on rows as always (a row's windows are batched with every other row's);
the tokenize stage keeps each window's character span and the embed stage each window's own
embedding beside the row's pooled one. `window_rows` then turns each finished row into its
windows' rows: the row's columns repeated, `window`, `char_start`, `char_end`, the window's
embedding in the embedding column and, with `rows,windows`, the row's as `row_embedding`.
A row with no window (its text could not be encoded) stays one row, its window columns null.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.schema import EMBEDDING, ROW_EMBEDDING, WINDOW, window_fields


def window_rows(
    rows: pa.RecordBatch,
    prefix: str,
    spans: pa.ListArray,
    window_outputs: pa.ListArray,
    keep_row_embedding: bool,
) -> pa.RecordBatch:
    """`rows` (finished output rows: their columns, the embedding column `prefix +
    embedding`, then the token stats and the error) as one row per window: in the place of
    the row's embedding, the window's columns (`window_fields`), its own embedding (from
    `window_outputs`) and, with `keep_row_embedding`, the row's as `row_embedding`.

    `spans` and `window_outputs` hold each row's windows (row -> windows), as the tokenize
    and embed stages make them: the same window counts."""
    offsets = spans.offsets.to_numpy().astype(np.int64)
    windows = np.diff(offsets)
    if not np.array_equal(windows, np.diff(window_outputs.offsets.to_numpy())):
        raise RuntimeError("the windows' spans and embeddings disagree on each row's windows")
    counts = np.maximum(windows, 1)  # a row without windows keeps one row, its windows null
    source = np.repeat(np.arange(rows.num_rows), counts)
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    index = np.arange(len(source), dtype=np.int64) - first[source]
    no_window = windows[source] == 0
    # each output row's window among the batch's windows (null for a row without)
    flat = pa.array(offsets[source] - offsets[0] + index, pa.int64(), mask=no_window)
    taken = rows.take(pa.array(source, pa.int64()))
    at = rows.schema.get_field_index(prefix + EMBEDDING)
    embedding = rows.schema.field(at)
    span_values = spans.flatten()
    added = [
        pa.array(index.astype(np.int32), mask=no_window),
        span_values.field(0).take(flat),
        span_values.field(1).take(flat),
        window_outputs.flatten().take(flat),
    ]
    added_fields = [*window_fields(prefix), embedding]
    if keep_row_embedding:
        added.append(taken.column(at))
        added_fields.append(embedding.with_name(prefix + ROW_EMBEDDING))
    schema = rows.schema
    fields = [*schema][:at] + added_fields + [*schema][at + 1 :]
    columns = [*taken.columns[:at], *added, *taken.columns[at + 1 :]]
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields, schema.metadata))


def rows_read(batch: pa.RecordBatch, prefix: str) -> int:
    """The input rows a batch of window rows holds: its rows of window 0, and those without
    a window (for progress, which counts input rows)."""
    first = pc.fill_null(pc.equal(batch.column(prefix + WINDOW), 0), True)
    return int(pc.sum(first).as_py() or 0)
