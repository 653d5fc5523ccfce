"""Evaluate a classifier on a labelled table (`bertetl evaluate`): check, predict, measure, write.

With a model, the true labels are checked against the model's labels before any model work,
then the model runs over the table through the engine (`bertetl.runs.enrich`: streaming,
batching, any executor) into a staging folder beside OUT, which is removed once the metrics
are computed. OUT receives `metrics.json`, the PNG plots and `report.html`, and is replaced
as a whole: it must be new, empty, or an earlier evaluation (it holds a `metrics.json`).

TABLE may be on an object store (`s3://bucket/prefix`, opened with the storage options;
docs/STORAGE.md): its files are read through their store's filesystem, and the model's
predictions are staged locally as for a local table. OUT is a local folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertetl.errors import InputError, ModelError
from bertetl.evaluate.config import EvaluateConfig
from bertetl.evaluate.metrics import compute_metrics
from bertetl.evaluate.page import render_page
from bertetl.evaluate.plots import draw_plots
from bertetl.evaluate.predictions import (
    Predictions,
    check_truth,
    model_classes,
    read_predictions,
)
from bertetl.io.inputs import resolve_inputs
from bertetl.io.paths import check_replaceable_folder
from bertetl.io.read import discover, source_root
from bertetl.io.stores.locations import Location, StorageError, is_uri

log = logging.getLogger(__name__)

METRICS = "metrics.json"
REPORT = "report.html"
#: What an evaluation writes into OUT (an OUT holding anything else is refused: it is replaced
#: whole).
EVALUATION_FILES = (METRICS, REPORT, "*.png")


@dataclass
class Evaluation:
    """What an evaluation wrote: the metrics document and the files, by name."""

    metrics: dict[str, Any]
    out: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.out / REPORT


def write_report(
    folder: Path, predictions: Predictions, metrics: dict[str, Any]
) -> dict[str, Path]:
    """Write `metrics.json`, the plots and `report.html` into `folder` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    images = draw_plots(predictions, metrics, folder)
    (folder / REPORT).write_text(render_page(metrics, folder, images), encoding="utf-8")
    names = [METRICS, *images.values(), REPORT]
    return {name: folder / name for name in names}


def check_out(out: str | os.PathLike[str], table: str | Location) -> Path:
    """Refuse an OUT that is not a local folder, is a file, a folder that is no earlier
    evaluation, or one that holds a local table or lies inside it."""
    if is_uri(out):
        raise StorageError(f"--out {out}: the report is written to a local folder; give one")
    path = check_replaceable_folder(
        out, "--out", "evaluation", "evaluation", METRICS, owned=EVALUATION_FILES
    )
    if isinstance(table, Location):  # on an object store: no local folder to overlap
        return path
    root = (Path(table) if os.path.isfile(table) else source_root(table)).resolve()
    if not os.path.isfile(table) and path.is_relative_to(root):  # later reads would see it
        raise InputError(f"--out {out} lies inside TABLE {table}; pick a folder outside it")
    if root.is_relative_to(path):
        raise InputError(f"TABLE {table} lies inside --out {out}; pick a folder outside it")
    return path


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` that replaces it when the block succeeds; removed (and
    `out` left as it was) when it fails."""
    staging = out.parent / f".{out.name}.{os.getpid()}.bertetl-tmp"
    previous = out.parent / f".{out.name}.{os.getpid()}.bertetl-old"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if out.exists():
            os.replace(out, previous)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def evaluate(
    table: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: EvaluateConfig,
    storage_options: dict[str, str] | None = None,
) -> Evaluation:
    """Evaluate `config`'s model (or the table's own predictions) against `config.label_column`
    and write the report into `out`; see the module docstring. `storage_options` open an
    object-store TABLE (`--storage-option`)."""
    table = os.fspath(table)
    (where,) = resolve_inputs([table], storage_options)
    out_path = check_out(out, where)
    files = discover(where)
    about = {
        "table": table,
        "label_column": config.label_column,
        "model": config.engine.classify_model if config.engine else None,
        "prefix": config.column_prefix,
    }
    with staged(out_path) as staging:
        if config.engine is None:
            predictions = read_predictions(
                table, files, config.label_column, config.column_prefix, config.text
            )
            metrics = _measure(predictions, about, config)
        else:
            metrics, predictions = _run_model(table, where, files, staging, about, config)
        written = write_report(staging, predictions, metrics)
    files_out = {name: out_path / path.name for name, path in written.items()}
    return Evaluation(metrics, out_path, files_out)


def _measure(
    predictions: Predictions, about: dict[str, Any], config: EvaluateConfig
) -> dict[str, Any]:
    return compute_metrics(
        predictions,
        about,
        calibration_bins=config.calibration_bins,
        confused_pairs=config.confused_pairs,
        examples=config.examples,
    )


def _run_model(
    table: str,
    where: str | Location,
    files: list[Any],
    staging: Path,
    about: dict[str, Any],
    config: EvaluateConfig,
) -> tuple[dict[str, Any], Predictions]:
    """Check the labels, run the classifier over the table into `staging/.predictions`, and
    measure (texts of the worst mistakes are read from there before it is removed)."""
    from bertetl.runs.enrich import enrich

    assert config.engine is not None
    engine = config.engine.model_copy(update={"include_scores": True})
    labels, multi_label = model_classes(engine)
    if not labels:
        raise ModelError(f"{engine.classify_model}: the model's config names no labels (id2label)")
    check_truth(table, files, config.label_column, labels, multi_label)  # before any model work
    predicted = staging / ".predictions"
    report = enrich(where, predicted, engine)
    log.info("predicted %d rows in %.1fs", report.rows, report.seconds)
    predictions = read_predictions(
        table, discover(predicted), config.label_column, engine.prefix, engine.text_column, labels
    )
    metrics = _measure(predictions, about, config)
    shutil.rmtree(predicted)
    return metrics, predictions
