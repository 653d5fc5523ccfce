"""Classification metrics from scikit-learn, as the `metrics.json` document.

Every figure is one scikit-learn call on the evaluated rows (see `Predictions`); this module only
chooses the arguments, decides where a metric is undefined, and arranges the results. The
schema (version 1; `docs/EVALUATE.md` has a worked example):

```
schema_version   1
task             "single_label" | "multi_label"
about            {table, label_column, model, prefix}: what was evaluated (model: null when
                 the predictions were read from the table)
labels           the label order of every list and matrix below: the model's label ids in
                 order, or (no model and no `scores` column) the labels seen, sorted
labels_from      "model" | "table"
rows             {total, evaluated, without_label, without_prediction}
accuracy         accuracy_score; multi-label: subset accuracy (every label of a row right)
balanced_accuracy  balanced_accuracy_score (single-label; null for multi-label)
hamming_loss     hamming_loss (multi-label; null for single-label)
precision, recall, f1
                 {macro, weighted, micro} (+ samples, multi-label) from
                 precision_recall_fscore_support(average=..., zero_division=0) over the labels
                 that occur in the truth or the predictions (a label absent from both is left
                 out, as scikit-learn does by default for single-label targets)
roc_auc          {macro, positive, positive_label}: macro = roc_auc_score(average="macro") on
                 the one-vs-rest indicator columns of the labels with both positive and
                 negative rows (all of them: the same as multi_class="ovr"); positive (binary
                 models only) = roc_auc_score for labels[1]. Null without `scores`.
average_precision  {macro, positive, positive_label}: average_precision_score, likewise over
                 the labels with a positive row
log_loss         log_loss(labels=all labels) on the probabilities; multi-label: the binary log
                 loss over every (row, label) pair (= the mean of the per-label log losses)
calibration      {of, strategy, bins, ece, confidence[], accuracy[], count[]}: of =
                 "top_label" (single-label: is the predicted label right, against `score`, its
                 probability) or "label_probabilities" (multi-label: every (row, label) pair
                 against its probability). confidence/accuracy = calibration_curve(n_bins=bins,
                 strategy="uniform"), one entry per non-empty bin; count = rows per non-empty
                 bin, binned as calibration_curve bins (bin b holds (b/bins, (b+1)/bins], the
                 first also 0); ece = sum(count / rows * |accuracy - confidence|).
per_label        [{label, support, predicted, precision, recall, f1, roc_auc,
                 average_precision}] in `labels` order (precision_recall_fscore_support with
                 average=None; roc_auc / average_precision null where undefined); multi-label
                 adds suggested_threshold {threshold, f1}: the probability cut that maximises the
                 label's F1 on these rows (from precision_recall_curve; predict when p >= cut)
confusion_matrix single-label: {counts, normalized}: confusion_matrix(labels=all labels), rows =
                 true label, columns = predicted, and normalize="true" (each row sums to 1; an
                 absent label's row is 0). Multi-label: {per_label: [{label, counts,
                 normalized}]} from multilabel_confusion_matrix / confusion_matrix per label:
                 [[tn, fp], [fn, tp]].
worst_confusions single-label: [{true, predicted, count, examples}] for the largest off-diagonal
                 cells; multi-label: [{label, missed, extra, examples}] for the labels with the
                 most errors. examples: [{file, row, text, kind, score, true_score}], the most
                 confident mistakes first (file: relative to the table; row: in that file)
warnings         [str]: what was undefined or suspicious, in words
```
Floats are plain JSON numbers; a metric that is undefined is null (never NaN).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from bertetl.evaluate.predictions import Predictions

SCHEMA_VERSION = 1


def _num(value: Any) -> float | None:
    """A JSON number, or None for an undefined (NaN) one."""
    value = float(value)
    return None if math.isnan(value) else value


def compute_metrics(
    predictions: Predictions,
    about: dict[str, Any] | None = None,
    calibration_bins: int = 10,
    confused_pairs: int = 5,
    examples: int = 5,
) -> dict[str, Any]:
    """The `metrics.json` document for `predictions` (schema in the module docstring)."""
    from sklearn.exceptions import UndefinedMetricWarning

    p = predictions
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "task": "multi_label" if p.multi_label else "single_label",
        "about": dict(about or {}),
        "labels": list(p.labels),
        "labels_from": p.labels_from,
        "rows": {
            "total": p.rows_total,
            "evaluated": p.rows,
            "without_label": p.rows_without_label,
            "without_prediction": p.rows_without_prediction,
        },
        "warnings": [],
    }
    with warnings.catch_warnings():  # undefined cases are decided and reported here
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        truth = truth_indicator(p)
        predicted = _predicted_indicator(p)
        result |= _label_metrics(p, truth, predicted, result["warnings"])
        result |= _probability_metrics(p, truth, result["per_label"], result["warnings"])
        result["calibration"] = _calibration(p, calibration_bins)
        if p.multi_label:
            result["confusion_matrix"] = _multi_label_confusion(p)
            result["worst_confusions"] = _worst_labels(p, confused_pairs, examples)
        else:
            result["confusion_matrix"] = _confusion(p)
            result["worst_confusions"] = _worst_pairs(p, confused_pairs, examples)
    return result


def truth_indicator(p: Predictions) -> np.ndarray:
    """One-vs-rest 0/1 columns of the true labels (multi-label: the truth itself)."""
    if p.multi_label:
        return p.truth
    return (p.truth[:, None] == np.arange(len(p.labels))[None, :]).astype(np.int8)


def _predicted_indicator(p: Predictions) -> np.ndarray:
    if p.multi_label:
        return p.predicted
    return (p.predicted[:, None] == np.arange(len(p.labels))[None, :]).astype(np.int8)


def _label_metrics(
    p: Predictions, truth: np.ndarray, predicted: np.ndarray, notes: list[str]
) -> dict[str, Any]:
    """Accuracy, averages and per-label precision/recall/F1/support (labels only)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    everything = np.arange(len(p.labels))
    y_true, y_pred = (p.truth, p.predicted)
    occurring = np.flatnonzero(truth.sum(axis=0) + predicted.sum(axis=0))
    averages = ["macro", "weighted", "micro"] + (["samples"] if p.multi_label else [])
    # single-label: labels=None is scikit-learn's own "labels in truth or predictions"
    label_subset = occurring if p.multi_label else None
    summary: dict[str, dict[str, float | None]] = {"precision": {}, "recall": {}, "f1": {}}
    for average in averages if len(occurring) else []:
        values = precision_recall_fscore_support(
            y_true, y_pred, labels=label_subset, average=average, zero_division=0
        )
        for name, value in zip(("precision", "recall", "f1"), values[:3], strict=True):
            summary[name][average] = _num(value)
    if not len(occurring):  # multi-label rows with no label, true or predicted
        summary = {name: dict.fromkeys(averages) for name in summary}
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=everything, average=None, zero_division=0
    )
    per_label = [
        {
            "label": label,
            "support": int(support[i]),
            "predicted": int(predicted[:, i].sum()),
            "precision": _num(precision[i]),
            "recall": _num(recall[i]),
            "f1": _num(f1[i]),
        }
        for i, label in enumerate(p.labels)
    ]
    absent = [p.labels[i] for i in everything if not support[i]]
    if absent and len(absent) < len(p.labels):
        notes.append(
            f"{len(absent)} label(s) never occur in the truth ({_names(absent)}): support 0, "
            "recall and F1 0, no ROC-AUC"
        )
    if not (truth.any(axis=0) & predicted.any(axis=0)).any():
        notes.append(
            "the true and the predicted labels have no label in common: every row is misclassified"
        )
    return {
        "accuracy": _num(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": None
        if p.multi_label
        else _num(balanced_accuracy_score(y_true, y_pred)),
        "hamming_loss": _num(hamming_loss(y_true, y_pred)) if p.multi_label else None,
        **summary,
        "per_label": per_label,
    }


def _names(labels: list[str], limit: int = 8) -> str:
    more = f", and {len(labels) - limit} more" if len(labels) > limit else ""
    return ", ".join(labels[:limit]) + more


def _probability_metrics(
    p: Predictions, truth: np.ndarray, per_label: list[dict[str, Any]], notes: list[str]
) -> dict[str, Any]:
    """ROC-AUC, average precision and log loss from every label's probability; suggested
    thresholds for multi-label models."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    binary = not p.multi_label and len(p.labels) == 2
    positive_label = p.labels[1] if binary else None
    empty = {"macro": None, "positive": None, "positive_label": positive_label}
    for row in per_label:
        row["roc_auc"] = row["average_precision"] = None
        if p.multi_label:
            row["suggested_threshold"] = None
    if p.scores is None:
        notes.append(
            "the predictions have no `scores` column (every label's probability): ROC-AUC, "
            "average precision, log loss and suggested thresholds need it; enrich with --scores"
        )
        return {"roc_auc": dict(empty), "average_precision": dict(empty), "log_loss": None}
    scores, n = p.scores, p.rows
    positives = truth.sum(axis=0)
    ranked = np.flatnonzero((positives > 0) & (positives < n))  # ROC-AUC defined
    with_positive = np.flatnonzero(positives > 0)  # average precision defined
    for i in ranked:
        per_label[i]["roc_auc"] = _num(roc_auc_score(truth[:, i], scores[:, i]))
    for i in with_positive:
        per_label[i]["average_precision"] = _num(average_precision_score(truth[:, i], scores[:, i]))
    undefined = [p.labels[i] for i in range(len(p.labels)) if i not in set(ranked)]
    if undefined:
        notes.append(
            f"ROC-AUC is undefined for {_names(undefined)} (no positive or no negative row); "
            "the macro averages leave such labels out"
        )
    roc = dict(empty, macro=_macro(roc_auc_score, truth, scores, ranked))
    precision = dict(empty, macro=_macro(average_precision_score, truth, scores, with_positive))
    if binary:
        roc["positive"] = per_label[1]["roc_auc"]
        precision["positive"] = per_label[1]["average_precision"]
    if p.multi_label:
        loss = log_loss(truth.ravel(), scores.ravel(), labels=[0, 1])
        _suggest_thresholds(p, truth, with_positive, per_label)
    else:
        loss = log_loss(p.truth, scores, labels=np.arange(len(p.labels)))
    return {"roc_auc": roc, "average_precision": precision, "log_loss": _num(loss)}


def _macro(metric: Any, truth: np.ndarray, scores: np.ndarray, columns: np.ndarray) -> float | None:
    """`metric(average="macro")` over the indicator columns where it is defined."""
    if not len(columns):
        return None
    if len(columns) == 1:
        return _num(metric(truth[:, columns[0]], scores[:, columns[0]]))
    return _num(metric(truth[:, columns], scores[:, columns], average="macro"))


def _suggest_thresholds(
    p: Predictions, truth: np.ndarray, columns: np.ndarray, per_label: list[dict[str, Any]]
) -> None:
    """Per label: the probability cut with the highest F1 on these rows (the lowest such
    cut on a tie), from the precision-recall curve's points."""
    from sklearn.metrics import precision_recall_curve

    assert p.scores is not None
    for i in columns:
        precision, recall, cuts = precision_recall_curve(truth[:, i], p.scores[:, i])
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        total = precision + recall
        f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
        best = int(np.argmax(f1))
        per_label[i]["suggested_threshold"] = {"threshold": _num(cuts[best]), "f1": _num(f1[best])}


def calibration_inputs(p: Predictions) -> tuple[str, np.ndarray, np.ndarray] | None:
    """What the reliability curve compares: its name, the 0/1 outcomes and their
    probabilities (None for a multi-label model without `scores`)."""
    if p.multi_label:
        if p.scores is None:
            return None
        outcome, probability, of = (
            truth_indicator(p).ravel(),
            p.scores.ravel(),
            "label_probabilities",
        )
    else:
        outcome, probability, of = (p.truth == p.predicted).astype(np.int8), p.score, "top_label"
    return of, outcome, np.clip(probability.astype(np.float64), 0.0, 1.0)


def _calibration(p: Predictions, bins: int) -> dict[str, Any] | None:
    """The reliability curve and expected calibration error (binning as calibration_curve)."""
    from sklearn.calibration import calibration_curve

    inputs = calibration_inputs(p)
    if inputs is None:
        return None
    of, outcome, probability = inputs
    accuracy, confidence = calibration_curve(outcome, probability, n_bins=bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, bins + 1)
    count = np.bincount(np.searchsorted(edges[1:-1], probability), minlength=bins)
    count = count[count > 0]
    ece = float(np.sum(count / len(probability) * np.abs(accuracy - confidence)))
    return {
        "of": of,
        "strategy": "uniform",
        "bins": bins,
        "ece": ece,
        "confidence": [float(v) for v in confidence],
        "accuracy": [float(v) for v in accuracy],
        "count": [int(v) for v in count],
    }


def _confusion(p: Predictions) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix

    labels = np.arange(len(p.labels))
    counts = confusion_matrix(p.truth, p.predicted, labels=labels)
    normalized = confusion_matrix(p.truth, p.predicted, labels=labels, normalize="true")
    return {"counts": counts.tolist(), "normalized": normalized.tolist()}


def _multi_label_confusion(p: Predictions) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

    counts = multilabel_confusion_matrix(p.truth, p.predicted)
    rows = []
    for i, label in enumerate(p.labels):
        normalized = confusion_matrix(
            p.truth[:, i], p.predicted[:, i], labels=[0, 1], normalize="true"
        )
        rows.append(
            {"label": label, "counts": counts[i].tolist(), "normalized": normalized.tolist()}
        )
    return {"per_label": rows}


def _example_rows(p: Predictions, rows: np.ndarray, kinds: list[str]) -> list[dict[str, Any]]:
    texts = p.texts(rows)
    return [
        {
            "file": p.sources[p.file_index[row]],
            "row": int(p.row[row]),
            "text": text,
            "kind": kind,
        }
        for row, text, kind in zip(rows, texts, kinds, strict=True)
    ]


def _worst_pairs(p: Predictions, pairs: int, examples: int) -> list[dict[str, Any]]:
    """The largest off-diagonal confusion cells, each with its most confident mistakes."""
    from sklearn.metrics import confusion_matrix

    k = len(p.labels)
    off = confusion_matrix(p.truth, p.predicted, labels=np.arange(k))
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:pairs]
    worst = []
    for true, predicted in zip(*np.unravel_index(order, off.shape), strict=True):
        if not off[true, predicted]:
            break
        rows = np.flatnonzero((p.truth == true) & (p.predicted == predicted))
        rows = rows[np.argsort(-p.score[rows], kind="stable")][:examples]
        found = _example_rows(p, rows, ["wrong"] * len(rows))
        for example, row in zip(found, rows, strict=True):
            example["score"] = float(p.score[row])
            example["true_score"] = float(p.scores[row, true]) if p.scores is not None else None
        worst.append(
            {
                "true": p.labels[true],
                "predicted": p.labels[predicted],
                "count": int(off[true, predicted]),
                "examples": found,
            }
        )
    return worst


def _worst_labels(p: Predictions, labels: int, examples: int) -> list[dict[str, Any]]:
    """Multi-label: the labels with the most errors, each with its most confident mistakes
    (a true label missed with the lowest probability, a wrong one with the highest)."""
    missed = (p.truth == 1) & (p.predicted == 0)
    extra = (p.truth == 0) & (p.predicted == 1)
    errors = missed.sum(axis=0) + extra.sum(axis=0)
    worst = []
    for i in np.argsort(-errors, kind="stable")[:labels]:
        if not errors[i]:
            break
        rows = np.flatnonzero(missed[:, i] | extra[:, i])
        if p.scores is not None:
            wrongness = np.where(missed[rows, i], 1.0 - p.scores[rows, i], p.scores[rows, i])
            rows = rows[np.argsort(-wrongness, kind="stable")]
        rows = rows[:examples]
        kinds = ["missed" if missed[row, i] else "extra" for row in rows]
        found = _example_rows(p, rows, kinds)
        for example, row in zip(found, rows, strict=True):
            example["score"] = float(p.scores[row, i]) if p.scores is not None else None
            example["true_score"] = None
        worst.append(
            {
                "label": p.labels[i],
                "missed": int(missed[:, i].sum()),
                "extra": int(extra[:, i].sum()),
                "examples": found,
            }
        )
    return worst
