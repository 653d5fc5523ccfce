"""The report's plots as PNGs: matplotlib figures on the Agg canvas, scikit-learn's displays.

Figures are `matplotlib.figure.Figure` objects saved straight to PNG (the Agg renderer): no
pyplot state, no display, safe in threads and worker processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bertetl.evaluate.metrics import calibration_inputs, truth_indicator
from bertetl.evaluate.predictions import Predictions

#: Curves (ROC, precision-recall) and small confusion matrices drawn, at most: the labels with
#: the most true rows (metrics.json has every label).
MOST_LABELS = 12
#: Confusion matrices with more labels are drawn without their numbers.
ANNOTATED_LABELS = 25
DPI = 100

#: File names (without `.png`) and titles, in report order.
TITLES = {
    "confusion_matrix": "Confusion matrix",
    "roc_curves": "ROC curves (one-vs-rest)",
    "pr_curves": "Precision-recall curves",
    "reliability": "Reliability diagram",
    "label_distribution": "Label distribution: true vs predicted",
}


def draw_plots(p: Predictions, metrics: dict[str, Any], folder: Path) -> dict[str, str]:
    """Draw every plot the data allows into `folder`; their file names by plot name."""
    drawn = {
        "confusion_matrix": _multi_label_confusion(metrics)
        if p.multi_label
        else _confusion(metrics),
        "roc_curves": _curves(p, metrics, "roc"),
        "pr_curves": _curves(p, metrics, "pr"),
        "reliability": _reliability(p, metrics),
        "label_distribution": _distribution(metrics),
    }
    written = {}
    for name, figure in drawn.items():
        if figure is not None:
            figure.savefig(folder / f"{name}.png", dpi=DPI)
            written[name] = f"{name}.png"
    return written


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _by_support(metrics: dict[str, Any], candidates: list[int]) -> list[int]:
    """The `MOST_LABELS` candidates with the most true rows, in label order."""
    support = [row["support"] for row in metrics["per_label"]]
    chosen = sorted(candidates, key=lambda i: -support[i])[:MOST_LABELS]
    return sorted(chosen)


def _confusion(metrics: dict[str, Any]) -> Any:
    """Heatmap of the row-normalised matrix; each cell shows its count and row share."""
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = metrics["labels"]
    counts = np.array(metrics["confusion_matrix"]["counts"])
    shares = np.array(metrics["confusion_matrix"]["normalized"])
    size = min(max(4.5, 0.7 * len(labels) + 2.5), 24)
    figure = _figure(size + 1, size)
    ax = figure.subplots()
    display = ConfusionMatrixDisplay(shares, display_labels=labels)
    display.plot(
        ax=ax,
        cmap="Blues",
        include_values=len(labels) <= ANNOTATED_LABELS,
        xticks_rotation=45 if len(labels) > 4 else "horizontal",
        im_kw={"vmin": 0.0, "vmax": 1.0},
    )
    if display.text_ is not None:
        for (i, j), text in np.ndenumerate(display.text_):
            text.set_text(f"{counts[i, j]}\n{shares[i, j]:.0%}")
    ax.set_title("rows: true label; cells: count and share of the row")
    return figure


def _multi_label_confusion(metrics: dict[str, Any]) -> Any:
    """One small 2x2 matrix per label (the labels with the most true rows)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    rows = metrics["confusion_matrix"]["per_label"]
    shown = _by_support(metrics, list(range(len(rows))))
    columns = min(4, len(shown))
    lines = -(-len(shown) // columns)
    figure = _figure(3.2 * columns, 3.0 * lines)
    axes = np.atleast_1d(figure.subplots(lines, columns, squeeze=False)).ravel()
    for ax, i in zip(axes, shown, strict=False):
        counts, shares = np.array(rows[i]["counts"]), np.array(rows[i]["normalized"])
        display = ConfusionMatrixDisplay(shares, display_labels=["no", "yes"])
        display.plot(ax=ax, cmap="Blues", colorbar=False, im_kw={"vmin": 0.0, "vmax": 1.0})
        for (a, b), text in np.ndenumerate(display.text_):
            text.set_text(f"{counts[a, b]}\n{shares[a, b]:.0%}")
        ax.set_title(rows[i]["label"])
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    return figure


def _curves(p: Predictions, metrics: dict[str, Any], kind: str) -> Any:
    """ROC or precision-recall curves, one per label where defined (needs `scores`)."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    if p.scores is None:
        return None
    key = "roc_auc" if kind == "roc" else "average_precision"
    defined = [i for i, row in enumerate(metrics["per_label"]) if row[key] is not None]
    if not defined:
        return None
    truth = truth_indicator(p)
    figure = _figure(6.5, 5.5)
    ax = figure.subplots()
    for n, i in enumerate(_by_support(metrics, defined)):
        label = p.labels[i]
        if kind == "roc":
            RocCurveDisplay.from_predictions(
                truth[:, i], p.scores[:, i], name=label, ax=ax, plot_chance_level=n == 0
            )
        else:
            PrecisionRecallDisplay.from_predictions(truth[:, i], p.scores[:, i], name=label, ax=ax)
    ax.legend(fontsize="small", loc="lower right" if kind == "roc" else "lower left")
    ax.set_title(TITLES[f"{kind}_curves"])
    if kind == "roc":
        ax.set(xlabel="false positive rate", ylabel="true positive rate")
    else:
        ax.set(xlabel="recall", ylabel="precision")
    return figure


def _reliability(p: Predictions, metrics: dict[str, Any]) -> Any:
    """Observed frequency against predicted probability per bin, and how many rows each bin
    holds."""
    from sklearn.calibration import CalibrationDisplay

    inputs = calibration_inputs(p)
    calibration = metrics.get("calibration")
    if inputs is None or calibration is None:
        return None
    of, outcome, probability = inputs
    bins = calibration["bins"]
    figure = _figure(6.0, 6.5)
    curve, histogram = figure.subplots(2, 1, height_ratios=[3, 1])
    name = "top label" if of == "top_label" else "every (row, label)"
    CalibrationDisplay.from_predictions(
        outcome, probability, n_bins=bins, strategy="uniform", ax=curve, name=name
    )
    curve.set_title(f"expected calibration error {calibration['ece']:.3f}")
    observed = "share right" if of == "top_label" else "share of true labels"
    curve.set(xlabel="mean predicted probability in the bin", ylabel=observed)
    histogram.hist(probability, bins=np.linspace(0.0, 1.0, bins + 1), color="tab:blue")
    histogram.set_xlabel("predicted probability")
    histogram.set_ylabel("rows")
    return figure


def _distribution(metrics: dict[str, Any]) -> Any:
    """Rows per label: in the truth and in the predictions, side by side."""
    rows = metrics["per_label"]
    labels = [row["label"] for row in rows]
    where = np.arange(len(labels))
    figure = _figure(min(max(5.0, 0.6 * len(labels) + 2.0), 24), 4.5)
    ax = figure.subplots()
    ax.bar(where - 0.2, [row["support"] for row in rows], width=0.4, label="true")
    ax.bar(where + 0.2, [row["predicted"] for row in rows], width=0.4, label="predicted")
    turned = {"rotation": 45, "ha": "right"} if len(labels) > 4 else {}
    ax.set_xticks(where, labels, **turned)
    ax.set_ylabel("rows")
    ax.legend()
    return figure
