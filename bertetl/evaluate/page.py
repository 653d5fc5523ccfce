"""`report.html`: one self-contained page (inline CSS, PNGs embedded as base64 data URIs), so it
opens offline, by double-click, and can be mailed as one file.

On load, a few lines of inline script write each image's natural width into the body's
`data-image-widths` attribute (and `data-images-loaded="true"` when every image decoded), which
lets a headless browser test prove the images render.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from bertetl.evaluate.plots import TITLES

#: Characters of an example text shown in the page (metrics.json has the whole text).
TEXT_CHARS = 400

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222;
       padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warnings li { color: #8a4b00; }
figure { display: inline-block; margin: 0.5rem 1rem 1rem 0; vertical-align: top; }
figure img { max-width: min(100%, 34rem); border: 1px solid #eee; }
.example { color: #444; max-width: 60rem; }
.muted { color: #777; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var widths = Array.prototype.map.call(document.images, function (image) {
    return image.naturalWidth;
  });
  document.body.setAttribute("data-image-widths", widths.join(","));
  document.body.setAttribute("data-images-loaded", String(
    widths.length > 0 && widths.every(function (width) { return width > 0; })));
});
"""


def number(value: Any, digits: int = 4) -> str:
    """A metric as the page shows it (and as tests read it back): 4 decimals, or n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _cell(value: Any, key: str | None = None) -> str:
    ident = f' id="{key}"' if key else ""
    if isinstance(value, int | float) or value is None:
        return f'<td class="num"{ident}>{number(value)}</td>'
    return f"<td{ident}>{escape(str(value))}</td>"


def _summary(metrics: dict[str, Any]) -> str:
    """The headline figures, one row each; the cell ids are the metric's name (tests read
    `#accuracy`). Figures a task does not have are left out, undefined ones show n/a."""
    multi = metrics["task"] == "multi_label"
    calibration = metrics.get("calibration") or {}
    roc, precision = metrics["roc_auc"], metrics["average_precision"]
    rows: list[tuple[str, str, Any]] = [
        (
            "accuracy",
            "accuracy (every label of a row)" if multi else "accuracy",
            metrics["accuracy"],
        )
    ]
    if multi:
        rows.append(("hamming_loss", "Hamming loss", metrics["hamming_loss"]))
    else:
        rows.append(("balanced_accuracy", "balanced accuracy", metrics["balanced_accuracy"]))
    rows += [
        ("f1_macro", "F1, macro", metrics["f1"].get("macro")),
        ("f1_weighted", "F1, weighted", metrics["f1"].get("weighted")),
        ("precision_macro", "precision, macro", metrics["precision"].get("macro")),
        ("recall_macro", "recall, macro", metrics["recall"].get("macro")),
        ("roc_auc_macro", "ROC-AUC, macro one-vs-rest", roc["macro"]),
    ]
    if roc["positive_label"] is not None:
        name = f"ROC-AUC, {roc['positive_label']} as positive"
        rows.append(("roc_auc_positive", name, roc["positive"]))
    bins = calibration.get("bins", "-")
    rows += [
        ("average_precision_macro", "average precision, macro", precision["macro"]),
        ("log_loss", "log loss", metrics["log_loss"]),
        ("ece", f"expected calibration error ({bins} bins)", calibration.get("ece")),
    ]
    body = "".join(
        f"<tr><th>{escape(name)}</th>{_cell(value, key)}</tr>" for key, name, value in rows
    )
    return f'<table id="summary">{body}</table>'


def _per_label(metrics: dict[str, Any]) -> str:
    multi = metrics["task"] == "multi_label"
    head = [
        "label",
        "support",
        "predicted",
        "precision",
        "recall",
        "F1",
        "ROC-AUC",
        "avg precision",
    ]
    if multi:
        head += ["suggested threshold", "F1 there"]
    lines = []
    for row in metrics["per_label"]:
        cells = [
            row["label"],
            row["support"],
            row["predicted"],
            row["precision"],
            row["recall"],
            row["f1"],
            row["roc_auc"],
            row["average_precision"],
        ]
        if multi:
            suggested = row.get("suggested_threshold") or {}
            cells += [suggested.get("threshold"), suggested.get("f1")]
        lines.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f'<table id="per-label"><tr>{header}</tr>{"".join(lines)}</table>'


def _counts(metrics: dict[str, Any]) -> str:
    if metrics["task"] == "multi_label" or len(metrics["labels"]) > 25:
        return ""
    labels = [escape(label) for label in metrics["labels"]]
    header = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{x}</th>" for x in labels) + "</tr>"
    body = "".join(
        f"<tr><th>{label}</th>" + "".join(_cell(int(n)) for n in row) + "</tr>"
        for label, row in zip(labels, metrics["confusion_matrix"]["counts"], strict=True)
    )
    return f'<h2>Confusion matrix (counts)</h2><table id="confusion">{header}{body}</table>'


def _example(example: dict[str, Any]) -> str:
    text = example.get("text")
    shown = (
        '<span class="muted">(no text column)</span>'
        if text is None
        else escape(text[:TEXT_CHARS] + ("…" if len(text) > TEXT_CHARS else ""))
    )
    score = example.get("score")
    where = escape(f"{example['file']} row {example['row']}")
    kind = "" if example.get("kind") == "wrong" else f"{escape(example['kind'])}, "
    probability = "" if score is None else f"p={score:.3f}, "
    return (
        f'<li class="example">{shown} <span class="muted">({kind}{probability}{where})</span></li>'
    )


def _confusions(metrics: dict[str, Any]) -> str:
    worst = metrics.get("worst_confusions") or []
    if not worst:
        return "<h2>Worst confusions</h2><p>No misclassified rows.</p>"
    parts = ["<h2>Worst confusions</h2>"]
    for entry in worst:
        if "true" in entry:
            pair = f"true {entry['true']}, predicted {entry['predicted']}"
            title = f"{escape(pair)}: {entry['count']} row(s)"
        else:
            title = f"{escape(entry['label'])}: missed {entry['missed']}, extra {entry['extra']}"
        examples = "".join(_example(e) for e in entry["examples"])
        parts.append(f"<h3>{title}</h3><ul>{examples}</ul>")
    return "".join(parts)


def _images(folder: Path, images: dict[str, str]) -> str:
    figures = []
    for name, file in images.items():
        data = base64.b64encode((folder / file).read_bytes()).decode("ascii")
        title = escape(TITLES.get(name, name))
        figures.append(
            f'<figure id="plot-{name}"><img src="data:image/png;base64,{data}" alt="{title}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    return "".join(figures)


def render_page(metrics: dict[str, Any], folder: Path, images: dict[str, str]) -> str:
    """The whole page for `metrics`, embedding the PNGs `images` names (files in `folder`)."""
    about = metrics.get("about", {})
    rows = metrics["rows"]
    model = about.get("model") or "predictions read from the table"
    title = f"bertetl evaluation: {about.get('table', '')}"
    warnings = "".join(f"<li>{escape(w)}</li>" for w in metrics["warnings"])
    facts = (
        f"<p>model: <code>{escape(str(model))}</code> · label column: "
        f"<code>{escape(str(about.get('label_column', '')))}</code> · "
        f"{escape(metrics['task'].replace('_', '-'))} · {len(metrics['labels'])} labels · "
        f"{rows['evaluated']} of {rows['total']} rows evaluated ({rows['without_label']} without a "
        f"label, {rows['without_prediction']} without a prediction)</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{escape(title)}</h1>
{facts}
{f'<h2>Warnings</h2><ul class="warnings">{warnings}</ul>' if warnings else ""}
<h2>Summary</h2>
{_summary(metrics)}
<h2>Plots</h2>
{_images(folder, images)}
<h2>Per label</h2>
{_per_label(metrics)}
{_counts(metrics)}
{_confusions(metrics)}
<p class="muted">Every figure, with its definition, is in metrics.json (schema: bertetl
docs/EVALUATE.md).</p>
<script>{SCRIPT}</script>
</body>
</html>
"""
