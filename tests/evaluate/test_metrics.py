"""Every figure of metrics.json against scikit-learn, recomputed here from the table's own
columns (string labels, the `scores` lists), not from the evaluator's arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.preprocessing import MultiLabelBinarizer

from bertetl.evaluate.metrics import compute_metrics
from bertetl.evaluate.predictions import read_predictions
from bertetl.io.read import discover
from tests.evaluate.tables import multi_label_table, single_label_table

EXACT = {"abs": 1e-12}

# the references below call balanced_accuracy_score on splits missing a class, as intended
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")


def measure(table: pa.Table, tmp_path: Path, name: str = "t", **options) -> dict:
    """metrics.json's document for a predictions table written as Parquet."""
    path = tmp_path / name / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    predictions = read_predictions(str(path.parent), discover(path.parent), "y", "", "text")
    metrics = compute_metrics(predictions, **options)
    return json.loads(json.dumps(metrics))  # exactly what metrics.json holds


def _kept(table: pa.Table) -> pa.Table:
    return table.filter(pa.compute.and_(table["y"].is_valid(), table["label"].is_valid()))


def ece(outcome: np.ndarray, probability: np.ndarray, bins: int) -> float:
    """Expected calibration error: calibration_curve's bins, weighted by np.histogram counts
    (no probability of these tables sits exactly on a bin edge)."""
    accuracy, confidence = calibration_curve(outcome, probability, n_bins=bins)
    counts, _ = np.histogram(probability, bins=np.linspace(0, 1, bins + 1))
    counts = counts[counts > 0]
    return float(np.sum(counts / len(probability) * np.abs(accuracy - confidence)))


def check_single_label(metrics: dict, table: pa.Table, labels: list[str]) -> None:
    data = _kept(table)
    y = np.array(data["y"].to_pylist(), dtype=object)
    yp = np.array(data["label"].to_pylist(), dtype=object)
    assert metrics["labels"] == labels
    assert metrics["rows"]["evaluated"] == len(y)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, yp), **EXACT)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, yp), **EXACT)
    for average in ("macro", "weighted", "micro"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, yp, average=average, zero_division=0
        )
        assert metrics["precision"][average] == pytest.approx(precision, **EXACT)
        assert metrics["recall"][average] == pytest.approx(recall, **EXACT)
        assert metrics["f1"][average] == pytest.approx(f1, **EXACT)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, yp, labels=labels, average=None, zero_division=0
    )
    for i, row in enumerate(metrics["per_label"]):
        assert row["label"] == labels[i]
        assert row["support"] == support[i] == np.sum(y == labels[i])
        assert row["predicted"] == np.sum(yp == labels[i])
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (precision[i], recall[i], f1[i]), **EXACT
        )
    assert metrics["confusion_matrix"]["counts"] == confusion_matrix(y, yp, labels=labels).tolist()
    assert np.allclose(
        metrics["confusion_matrix"]["normalized"],
        confusion_matrix(y, yp, labels=labels, normalize="true"),
        atol=1e-12,
    )
    score = data["score"].to_numpy()
    calibration = metrics["calibration"]
    assert calibration["of"] == "top_label" and calibration["bins"] == 10
    correct = (y == yp).astype(int)
    accuracy, confidence = calibration_curve(correct, score, n_bins=10)
    assert np.allclose(calibration["accuracy"], accuracy) and np.allclose(
        calibration["confidence"], confidence
    )
    assert calibration["ece"] == pytest.approx(ece(correct, score, 10), abs=1e-9)
    check_probabilities(metrics, y, np.array(data["scores"].to_pylist()), labels)


def check_probabilities(metrics: dict, y: np.ndarray, scores: np.ndarray, labels: list[str]):
    """ROC-AUC, average precision and log loss (single-label)."""
    present = [i for i, label in enumerate(labels) if 0 < np.sum(y == label) < len(y)]
    for i, row in enumerate(metrics["per_label"]):
        truth = y == labels[i]
        expected = roc_auc_score(truth, scores[:, i]) if i in present else None
        assert row["roc_auc"] == pytest.approx(expected, **EXACT)
        expected = average_precision_score(truth, scores[:, i]) if truth.any() else None
        assert row["average_precision"] == pytest.approx(expected, **EXACT)
    roc = metrics["roc_auc"]
    if len(labels) == 2:
        assert roc["positive_label"] == labels[1]
        expected = roc_auc_score(y == labels[1], scores[:, 1]) if present else None
        assert roc["positive"] == pytest.approx(expected, **EXACT)
        # the macro mean of both one-vs-rest AUCs equals it (p0 = 1 - p1, to float rounding)
        assert roc["macro"] == pytest.approx(expected, abs=1e-6)
    elif len(present) == len(labels):
        expected = roc_auc_score(y, scores, multi_class="ovr", labels=labels, average="macro")
        assert roc["macro"] == pytest.approx(expected, **EXACT)
    elif len(present) > 1:
        indicator = np.array([[label == value for label in labels] for value in y])
        expected = roc_auc_score(indicator[:, present], scores[:, present], average="macro")
        assert roc["macro"] == pytest.approx(expected, **EXACT)
    else:
        assert roc["macro"] is None
    positives = [i for i, label in enumerate(labels) if np.any(y == label)]
    indicator = np.array([[label == value for label in labels] for value in y])
    expected = (
        average_precision_score(indicator[:, positives], scores[:, positives], average="macro")
        if len(positives) > 1
        else average_precision_score(indicator[:, positives[0]], scores[:, positives[0]])
    )
    assert metrics["average_precision"]["macro"] == pytest.approx(expected, **EXACT)
    loss = log_loss(y, scores.astype(np.float32), labels=labels)
    assert metrics["log_loss"] == pytest.approx(loss, **EXACT)


def test_binary(tmp_path: Path) -> None:
    labels = ["neg", "pos"]
    truth = [labels[i % 2] for i in range(60)]
    truth[5] = None  # no label: left out
    table = single_label_table(truth, labels, missing={7, 8})  # no prediction: left out
    metrics = measure(table, tmp_path)
    assert metrics["task"] == "single_label" and metrics["labels_from"] == "model"
    assert metrics["rows"] == {
        "total": 60,
        "evaluated": 57,
        "without_label": 1,
        "without_prediction": 2,
    }
    check_single_label(metrics, table, labels)
    assert metrics["warnings"] == []


def test_four_classes(tmp_path: Path) -> None:
    labels = ["billing", "bug", "other", "praise"]
    rng = np.random.default_rng(3)
    truth = [labels[i] for i in rng.integers(0, 4, size=90)]
    table = single_label_table(truth, labels, seed=3, lean=1.0)
    metrics = measure(table, tmp_path)
    check_single_label(metrics, table, labels)
    worst = metrics["worst_confusions"]
    counts = np.array(metrics["confusion_matrix"]["counts"])
    np.fill_diagonal(counts, 0)
    assert [w["count"] for w in worst] == sorted(counts.ravel(), reverse=True)[:5]
    first = worst[0]
    data = table.to_pylist()
    for example in first["examples"]:
        row = data[example["row"]]
        assert (row["y"], row["label"]) == (first["true"], first["predicted"])
        assert example["text"] == row["text"] and example["file"] == "part-0.parquet"
        assert example["score"] == pytest.approx(row["score"])
    scores = [e["score"] for e in first["examples"]]
    assert scores == sorted(scores, reverse=True)  # most confident mistakes first


def test_a_class_missing_from_the_split(tmp_path: Path) -> None:
    labels = ["negative", "neutral", "positive"]
    truth = ["negative", "positive"] * 30  # no neutral row
    table = single_label_table(truth, labels, seed=5, lean=0.8)
    metrics = measure(table, tmp_path)
    assert "neutral" in {row["label"] for row in table.to_pylist()}  # but it is predicted
    check_single_label(metrics, table, labels)
    neutral = metrics["per_label"][1]
    assert neutral["support"] == 0 and neutral["roc_auc"] is None
    assert any("never occur in the truth (neutral)" in w for w in metrics["warnings"])


def test_a_single_class_table(tmp_path: Path) -> None:
    labels = ["neg", "pos"]
    table = single_label_table(["pos"] * 30, labels, seed=2, lean=0.5)
    metrics = measure(table, tmp_path)
    check_single_label(metrics, table, labels)
    assert metrics["roc_auc"] == {"macro": None, "positive": None, "positive_label": "pos"}
    assert any("ROC-AUC is undefined for neg, pos" in w for w in metrics["warnings"])


def test_no_overlap_between_true_and_predicted_labels(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    table = single_label_table(["a"] * 20, labels, seed=1, lean=-50.0)
    assert {row["label"] for row in table.to_pylist()} == {"b", "c"}
    metrics = measure(table, tmp_path)
    check_single_label(metrics, table, labels)
    assert metrics["accuracy"] == 0.0
    assert any("no label in common" in w for w in metrics["warnings"])


def test_without_scores_probability_metrics_are_null(tmp_path: Path) -> None:
    labels = ["neg", "pos"]
    table = single_label_table(["neg", "pos"] * 10, labels, scores=False)
    metrics = measure(table, tmp_path)
    assert metrics["labels_from"] == "table"
    assert metrics["roc_auc"]["macro"] is None and metrics["log_loss"] is None
    assert metrics["average_precision"]["macro"] is None
    assert metrics["calibration"]["of"] == "top_label"  # `score` suffices
    assert any("no `scores` column" in w for w in metrics["warnings"])
    y, yp = table["y"].to_pylist(), table["label"].to_pylist()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, yp), **EXACT)


def test_multi_label(tmp_path: Path) -> None:
    labels = ["billing", "bug", "praise", "urgent", "spam"]
    rng = np.random.default_rng(7)
    truth: list[list[str] | None] = [
        [label for label in labels[:4] if rng.random() < 0.35] for _ in range(70)
    ]  # "spam" never true
    truth[3] = []  # no label at all: a row like any other
    truth[4] = None  # no label column value: left out
    table = multi_label_table(truth, labels, seed=7)
    metrics = measure(table, tmp_path, calibration_bins=8)
    assert metrics["task"] == "multi_label" and metrics["rows"]["evaluated"] == 69
    kept = [row for row in table.to_pylist() if row["y"] is not None]
    binarizer = MultiLabelBinarizer(classes=labels)
    Y = binarizer.fit_transform([row["y"] for row in kept])
    P = binarizer.transform([row["labels"] for row in kept])
    S = np.array([row["scores"] for row in kept], dtype=np.float32)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(Y, P), **EXACT)
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(Y, P), **EXACT)
    assert metrics["balanced_accuracy"] is None
    occurring = [j for j in range(len(labels)) if Y[:, j].any() or P[:, j].any()]
    for average in ("macro", "weighted", "micro", "samples"):
        values = precision_recall_fscore_support(
            Y, P, labels=occurring, average=average, zero_division=0
        )
        for name, value in zip(("precision", "recall", "f1"), values[:3], strict=False):
            assert metrics[name][average] == pytest.approx(value, **EXACT)
    precision, recall, f1, _ = precision_recall_fscore_support(Y, P, average=None, zero_division=0)
    matrices = multilabel_confusion_matrix(Y, P)
    for j, row in enumerate(metrics["per_label"]):
        assert (row["support"], row["predicted"]) == (Y[:, j].sum(), P[:, j].sum())
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (precision[j], recall[j], f1[j]), **EXACT
        )
        assert metrics["confusion_matrix"]["per_label"][j]["counts"] == matrices[j].tolist()
        defined = 0 < Y[:, j].sum() < len(Y)
        expected = roc_auc_score(Y[:, j], S[:, j]) if defined else None
        assert row["roc_auc"] == pytest.approx(expected, **EXACT)
        suggested = row["suggested_threshold"]
        if not Y[:, j].any():
            assert suggested is None and row["average_precision"] is None
            continue
        assert row["average_precision"] == pytest.approx(
            average_precision_score(Y[:, j], S[:, j]), **EXACT
        )
        # the suggested cut gives the F1 it claims, and no cut does better
        at_cut = f1_score(Y[:, j], S[:, j] >= suggested["threshold"], zero_division=0)
        assert suggested["f1"] == pytest.approx(at_cut, abs=1e-9)
        best = max(f1_score(Y[:, j], S[:, j] >= t, zero_division=0) for t in np.unique(S[:, j]))
        assert suggested["f1"] == pytest.approx(best, abs=1e-9)
    ranked = [j for j in range(len(labels)) if 0 < Y[:, j].sum() < len(Y)]
    assert metrics["roc_auc"]["macro"] == pytest.approx(
        roc_auc_score(Y[:, ranked], S[:, ranked], average="macro"), **EXACT
    )
    per_label_loss = [log_loss(Y[:, j], S[:, j], labels=[0, 1]) for j in range(len(labels))]
    assert metrics["log_loss"] == pytest.approx(np.mean(per_label_loss), abs=1e-6)
    assert metrics["calibration"]["ece"] == pytest.approx(ece(Y.ravel(), S.ravel(), 8), abs=1e-9)
    assert any("never occur in the truth (spam)" in w for w in metrics["warnings"])
    worst = metrics["worst_confusions"][0]
    errors = (Y != P).sum(axis=0)
    assert worst["label"] == labels[int(np.argmax(errors))]
    assert worst["missed"] + worst["extra"] == errors.max()
