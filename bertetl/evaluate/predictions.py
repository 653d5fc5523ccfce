"""True labels and a classifier's predictions, read from Parquet into the arrays metrics use.

A table is single-label when its label column holds scalars (strings, integers, booleans,
dictionaries of them) and multi-label when it holds lists of them. Predictions are the columns
`enrich --classify-model` writes (`bertetl.schema`): `label` and `score` always, `scores` (every
label's probability, in the model's label order, which the field's `labels` metadata names) with
`--scores`, and `labels` (the labels over the threshold) for a multi-label model.

A row counts when it has a true label and a prediction: rows with a null label, or with no
prediction (`enrich_error`: null, empty or blank text), are counted and left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.config import EngineConfig
from bertetl.engine.tokenize import as_plain_text
from bertetl.errors import InputError
from bertetl.io.read import SourceFile, read_columns, read_schema, require_column
from bertetl.schema import LABEL, LABELS, SCORE, SCORES

#: Unknown labels named in an error, at most.
NAMED = 10


@dataclass
class Predictions:
    """Aligned true labels, predictions and probabilities of the rows that have both.

    Single-label: `truth` and `predicted` are label ids (int64, shape (n,)); multi-label: 0/1
    indicator matrices (int8, shape (n, k)). `score` is the predicted label's probability
    (single-label) or the highest label probability (multi-label); `scores` holds every
    label's probability (n, k) when the predictions have them.
    """

    labels: list[str]
    multi_label: bool
    truth: np.ndarray
    predicted: np.ndarray
    score: np.ndarray
    scores: np.ndarray | None
    #: Where each row comes from: `sources[file_index[i]]`, row `row[i]` of that file.
    sources: list[str]
    file_index: np.ndarray
    row: np.ndarray
    #: "model" when the label list is the model's (its config or the `scores` metadata),
    #: "table" when it is the labels seen in the truth and the predictions.
    labels_from: str = "model"
    rows_total: int = 0
    rows_without_label: int = 0
    rows_without_prediction: int = 0
    #: Texts of some rows (indices into these arrays); None when no text column is known.
    read_texts: Callable[[np.ndarray], list[str | None]] | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return len(self.truth)

    def texts(self, indices: np.ndarray) -> list[str | None]:
        """The texts of the rows at `indices` (None each when no text column is known)."""
        if self.read_texts is None or not len(indices):
            return [None] * len(indices)
        return self.read_texts(np.asarray(indices))

    @classmethod
    def from_probabilities(
        cls,
        labels: list[str],
        truth: np.ndarray,
        probabilities: np.ndarray,
        texts: list[str] | None = None,
        sources: list[str] | None = None,
        file_index: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> Predictions:
        """Single-label predictions from label ids and softmax probabilities (argmax wins),
        as `bertetl train` has them for its held-out split; `texts` in the same order."""
        probabilities = np.asarray(probabilities, dtype=np.float32)
        predicted = probabilities.argmax(axis=1)
        n = len(truth)

        def read(indices: np.ndarray) -> list[str | None]:
            return [texts[i] for i in indices] if texts is not None else [None] * len(indices)

        return cls(
            labels=list(labels),
            multi_label=False,
            truth=np.asarray(truth, dtype=np.int64),
            predicted=predicted.astype(np.int64),
            score=probabilities.max(axis=1),
            scores=probabilities,
            sources=sources or [""],
            file_index=np.zeros(n, dtype=np.int32) if file_index is None else file_index,
            row=np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64),
            rows_total=n,
            read_texts=read,
        )


def labels_of(scores: pa.Field) -> list[str] | None:
    """The label order of a `scores` column, from its field metadata (None when absent)."""
    raw = (scores.metadata or {}).get(b"labels")
    return [str(label) for label in json.loads(raw)] if raw else None


def model_classes(engine: EngineConfig) -> tuple[list[str], bool]:
    """The classifier's labels (in id order) and whether it is multi-label: the columns the
    engine would add, read from the model's config (no model loads)."""
    from bertetl.engine.pipeline import Pipeline

    fields = {f.name: f for f in Pipeline(engine).added_fields()}
    labels = labels_of(fields[engine.prefix + SCORES])
    return labels or [], engine.prefix + LABELS in fields


def is_label_value(dtype: pa.DataType) -> bool:
    """Strings, integers or booleans (or a dictionary of them): what a class label may be."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_integer(dtype)
        or pa.types.is_boolean(dtype)
    )


def label_type(file: SourceFile, schema: pa.Schema, column: str) -> bool:
    """True when the label column holds lists (multi-label); a missing column or a type that
    is no label is an `InputError` naming the file."""
    dtype = require_column(file, schema, column, "label")
    is_list = (
        pa.types.is_list(dtype)
        or pa.types.is_large_list(dtype)
        or pa.types.is_fixed_size_list(dtype)
    )
    if not is_label_value(dtype.value_type if is_list else dtype):
        raise InputError(
            f"{file.path}: label column {column!r} has type {dtype}; expected strings, integers "
            "or booleans (or a list of them for a multi-label model)"
        )
    return is_list


def _strings(array: pa.Array) -> pa.Array:
    """A scalar label column as strings."""
    return pc.cast(as_plain_text(array), pa.string())


def _list_strings(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A list label column's labels as strings, with the row each belongs to."""
    array = as_plain_text(array)
    values = _strings(array.flatten())
    parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
    keep = pc.is_valid(values)
    return values.filter(keep), parents[keep.to_numpy(zero_copy_only=False)]


def _distinct(arrays: list[pa.Array]) -> list[str]:
    if not arrays:
        return []
    values = pc.unique(pa.chunked_array(arrays, pa.string())).drop_null()
    return sorted(values.to_pylist())


def unknown_labels_error(
    table: str, column: str, unknown: list[str], known: list[str]
) -> InputError:
    named = ", ".join(repr(label) for label in unknown[:NAMED])
    more = f" and {len(unknown) - NAMED} more" if len(unknown) > NAMED else ""
    return InputError(
        f"{table}: label column {column!r} holds {len(unknown)} label(s) the model does not "
        f"know: {named}{more} (the model's labels: {', '.join(known)}); filter those rows out "
        "or evaluate a model trained on them"
    )


def check_truth(
    table: str, files: list[SourceFile], column: str, labels: list[str], multi_label: bool
) -> None:
    """Before any model work: the label column exists in every file with a label type that
    fits the model (lists for a multi-label one), names only the model's labels, and some row
    has a label."""
    seen: list[pa.Array] = []
    labelled = 0
    for file in files:
        is_list = label_type(file, read_schema(file), column)
        _check_shape(file, column, is_list, multi_label)
        values = read_columns(file, [column]).column(column)
        labelled += len(values) - values.null_count
        array = as_plain_text(values)
        seen.append(_list_strings(array)[0] if is_list else _strings(array))
    unknown = sorted(set(_distinct(seen)) - set(labels))
    if unknown:
        raise unknown_labels_error(table, column, unknown, labels)
    if not labelled:
        raise InputError(
            f"{table}: no row has a label in {column!r} (or the table has no rows); "
            "nothing to evaluate"
        )


def _check_shape(file: SourceFile, column: str, is_list: bool, multi_label: bool) -> None:
    if is_list and not multi_label:
        raise InputError(
            f"{file.path}: label column {column!r} holds lists (multi-label) but the model is "
            "single-label; give one label per row"
        )
    if multi_label and not is_list:
        raise InputError(
            f"{file.path}: the model is multi-label but label column {column!r} holds one "
            f"label per row; give a list of labels per row"
        )


@dataclass
class _Layout:
    """Which prediction columns the files hold (the first file decides; the others must match)."""

    multi_label: bool
    has_scores: bool
    labels: list[str] | None


def _layout(file: SourceFile, schema: pa.Schema, column: str, prefix: str) -> _Layout:
    is_list = label_type(file, schema, column)
    try:
        require_column(file, schema, prefix + LABEL, "prediction")
    except InputError as e:
        raise InputError(
            f"{e}; enrich the table with --classify-model M --scores first, or evaluate with "
            "--classify-model instead of --predictions"
        ) from e
    multi = prefix + LABELS in schema.names
    _check_shape(file, column, is_list, multi)
    scores = prefix + SCORES
    labels = labels_of(schema.field(scores)) if scores in schema.names else None
    return _Layout(multi, labels is not None, labels)


@dataclass
class _Parts:
    """Per-file pieces of the kept rows, joined once every file is read."""

    truth: list[pa.Array] = field(default_factory=list)
    truth_rows: list[np.ndarray] = field(default_factory=list)  # multi-label: row of each label
    predicted: list[pa.Array] = field(default_factory=list)
    predicted_rows: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    file_index: list[np.ndarray] = field(default_factory=list)
    row: list[np.ndarray] = field(default_factory=list)
    kept: int = 0


def read_predictions(
    table: str,
    files: list[SourceFile],
    column: str,
    prefix: str = "",
    text_column: str | None = None,
    labels: list[str] | None = None,
) -> Predictions:
    """True labels and predictions of every file of an enriched table.

    `labels` (the model's, in id order) overrides the `scores` metadata; without either the
    label list is every label seen in the truth and the predictions, sorted, and there are no
    probabilities. A true label outside a known label list is an `InputError` naming it.
    """
    predicted_columns = {prefix + name for name in (LABEL, SCORE, SCORES, LABELS)}
    if column in predicted_columns:
        raise InputError(
            f"label column {column!r} is also where the predictions are; enrich with a "
            "--prefix (e.g. --prefix pred_) and give the same --prefix here"
        )
    layout: _Layout | None = None
    parts = _Parts()
    totals = {"rows": 0, "without_label": 0, "without_prediction": 0}
    for index, file in enumerate(files):
        schema = read_schema(file)
        found = _layout(file, schema, column, prefix)
        if text_column is not None:
            require_column(file, schema, text_column, "text")
        if layout is None:
            layout = found
        elif found != layout:
            raise InputError(
                f"{file.path}: its prediction columns differ from {files[0].path}'s "
                "(multi-label, scores or label order); evaluate tables enriched by one model"
            )
        _read_file(file, index, column, prefix, layout, parts, totals)
    assert layout is not None  # discover() never returns no files
    if not parts.kept:
        raise InputError(
            f"{table}: nothing to evaluate: of {totals['rows']} row(s), "
            f"{totals['without_label']} have no label in {column!r} and "
            f"{totals['without_prediction']} no prediction (enrich_error)"
        )
    known = labels or layout.labels
    predictions = _assemble(table, column, layout, parts, known)
    predictions.sources = [f.relative for f in files]
    predictions.rows_total = totals["rows"]
    predictions.rows_without_label = totals["without_label"]
    predictions.rows_without_prediction = totals["without_prediction"]
    if text_column is not None:
        predictions.read_texts = _text_reader(files, text_column, predictions)
    return predictions


def _read_file(
    file: SourceFile,
    index: int,
    column: str,
    prefix: str,
    layout: _Layout,
    parts: _Parts,
    totals: dict[str, int],
) -> None:
    """Add one file's kept rows to `parts` and its row counts to `totals`."""
    predicted_column = prefix + (LABELS if layout.multi_label else LABEL)
    columns = [column, predicted_column, prefix + SCORE]
    if layout.has_scores:
        columns.append(prefix + SCORES)
    data = read_columns(file, list(dict.fromkeys(columns)))
    truth = as_plain_text(data.column(column))
    predicted = as_plain_text(data.column(predicted_column))
    has_label = pc.is_valid(truth)
    keep = pc.and_(has_label, pc.is_valid(predicted))
    labelled = int(pc.sum(has_label).as_py() or 0)
    kept_rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    totals["rows"] += data.num_rows
    totals["without_label"] += data.num_rows - labelled
    totals["without_prediction"] += labelled - len(kept_rows)
    if not len(kept_rows):
        return
    take = pa.array(kept_rows)
    truth, predicted = truth.take(take), predicted.take(take)
    if layout.multi_label:
        values, rows = _list_strings(truth)
        parts.truth.append(values)
        parts.truth_rows.append(rows + parts.kept)
        values, rows = _list_strings(predicted)
        parts.predicted.append(values)
        parts.predicted_rows.append(rows + parts.kept)
    else:
        parts.truth.append(_strings(truth))
        parts.predicted.append(_strings(predicted))
    score = as_plain_text(data.column(prefix + SCORE)).take(take)
    parts.score.append(
        _finite(score.to_numpy(zero_copy_only=False).astype(np.float32), file, SCORE, kept_rows)
    )
    if layout.has_scores:
        scores = as_plain_text(data.column(prefix + SCORES)).take(take)
        parts.scores.append(_finite(_score_matrix(scores, file), file, SCORES, kept_rows))
    parts.file_index.append(np.full(len(kept_rows), index, dtype=np.int32))
    parts.row.append(kept_rows.astype(np.int64))
    parts.kept += len(kept_rows)


def _finite(values: np.ndarray, file: SourceFile, column: str, rows: np.ndarray) -> np.ndarray:
    """`values` when every score is a number; else an `InputError` naming the file, the
    column, the first rows and how many (NaN, infinite or null scores break every metric)."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.ndim > 1:
        bad = bad.any(axis=1)
    if not bad.any():
        return values
    shown = ", ".join(str(int(r)) for r in rows[bad][:5])
    raise InputError(
        f"{file.path}: column {column!r} holds {int(bad.sum())} score(s) that are not "
        f"probabilities (NaN, infinite, null, or outside 0..1) on predicted rows, first at "
        f"row(s) {shown}; every predicted row needs a score: fix or drop those rows"
    )


def _score_matrix(scores: pa.Array, file: SourceFile) -> np.ndarray:
    """Rows x labels from a `scores` column: a fixed-size list as bertetl writes Parquet, or a
    plain list as in a Delta or Iceberg table (which have no fixed-size list), every row the
    same length."""
    if pa.types.is_fixed_size_list(scores.type):
        width = scores.type.list_size
    else:
        lengths = pc.list_value_length(scores).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if len(lengths) else 0
        if scores.null_count or (lengths != width).any():
            raise InputError(
                f"{file.path}: column {SCORES!r} holds lists of different lengths or nulls; "
                "expected one score per label on every predicted row"
            )
    flat = scores.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(scores), width)


def _codes(values: pa.Array, labels: list[str]) -> np.ndarray:
    return pc.index_in(values, value_set=pa.array(labels, pa.string())).to_numpy(
        zero_copy_only=False
    )


def _indicator(values: pa.Array, rows: np.ndarray, labels: list[str], n: int) -> np.ndarray:
    matrix = np.zeros((n, len(labels)), dtype=np.int8)
    matrix[rows, _codes(values, labels).astype(np.int64)] = 1
    return matrix


def _assemble(
    table: str, column: str, layout: _Layout, parts: _Parts, known: list[str] | None
) -> Predictions:
    """Join the per-file pieces into label ids (or indicators) over the label list."""
    truth = pa.chunked_array(parts.truth, pa.string()).combine_chunks()
    predicted = pa.chunked_array(parts.predicted, pa.string()).combine_chunks()
    seen_truth, seen_predicted = _distinct([truth]), _distinct([predicted])
    labels = known or sorted(set(seen_truth) | set(seen_predicted))
    unknown = sorted(set(seen_truth) - set(labels))
    if unknown:
        raise unknown_labels_error(table, column, unknown, labels)
    stray = sorted(set(seen_predicted) - set(labels))
    if stray:
        raise InputError(
            f"{table}: the prediction column holds label(s) {stray} missing from its scores' "
            "label list; the predictions are not one model's output"
        )
    n = parts.kept
    if layout.multi_label:
        truth_ids = _indicator(truth, np.concatenate(parts.truth_rows), labels, n)
        predicted_ids = _indicator(predicted, np.concatenate(parts.predicted_rows), labels, n)
    else:
        truth_ids = _codes(truth, labels).astype(np.int64)
        predicted_ids = _codes(predicted, labels).astype(np.int64)
    scores = np.concatenate(parts.scores) if layout.has_scores else None
    if scores is not None and scores.shape[1] != len(labels):
        raise InputError(
            f"{table}: the scores column has {scores.shape[1]} probabilities per row but the "
            f"model has {len(labels)} labels"
        )
    return Predictions(
        labels=labels,
        multi_label=layout.multi_label,
        truth=truth_ids,
        predicted=predicted_ids,
        score=np.concatenate(parts.score),
        scores=scores,
        sources=[],
        file_index=np.concatenate(parts.file_index),
        row=np.concatenate(parts.row),
        labels_from="model" if known else "table",
    )


def _text_reader(
    files: list[SourceFile], column: str, predictions: Predictions
) -> Callable[[np.ndarray], list[str | None]]:
    """Read the text of some rows, one file's text column at a time."""

    def read(indices: np.ndarray) -> list[str | None]:
        texts: list[str | None] = [None] * len(indices)
        file_of = predictions.file_index[indices]
        for index in np.unique(file_of):
            at = np.flatnonzero(file_of == index)
            values = read_columns(files[index], [column]).column(column)
            taken = values.take(pa.array(predictions.row[indices[at]])).to_pylist()
            for position, text in zip(at, taken, strict=True):
                texts[position] = text
        return texts

    return read
