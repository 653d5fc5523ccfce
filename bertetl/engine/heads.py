"""What every labelling head shares: its column prefix, a classifier-kind check made before any
model work, and per-label probabilities turned into `label` / `score` / `scores` / `labels`.

A head is one labelling of each row (`bertetl.config.Head`): a sequence classifier
(`--classify-model`, `--classify NAME=DIR`) or a zero-shot label set (`--zero-shot`). The
unnamed head writes `label`, `score`, ...; a head named NAME writes `NAME_label`, ...; both
after the global `--prefix`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from bertetl.errors import ModelError
from bertetl.schema import LABEL, LABELS, SCORE, SCORES, classify_fields


def head_prefix(prefix: str, name: str) -> str:
    """The prefix of a head's columns: `--prefix`, then `NAME_` for a named head."""
    return f"{prefix}{name}_" if name else prefix


def check_sequence_classifier(model_dir: Path, option: str = "--classify") -> dict:
    """The model's `config.json`, once its architecture is a sequence classifier; a
    `ModelError` naming the model and what it is otherwise (read from config.json only, so
    it fails before any model work)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return config
    if any(a.endswith("ForTokenClassification") for a in architectures):
        what = (
            "a token-classification model (it tags tokens, e.g. named entities: give it as "
            "--ner NAME=DIR)"
        )
    else:
        what = f"not a sequence-classification model (architectures: {architectures or 'none'})"
    raise ModelError(
        f"{option} {model_dir} is {what}; give a model trained with a sequence-classification "
        "head, e.g. by `bertetl train`"
    )


class LabelColumns:
    """Per-row label probabilities (rows x labels) -> a head's Arrow columns, in the order
    `fields()` gives them: `label` (null for rows without an output, and where the best
    score is below `min_score`), `score` (the best probability), optional `scores` (every
    label's, in label order) and, for multi-label heads, `labels` (those at or above
    `threshold`)."""

    def __init__(
        self,
        prefix: str,
        labels: list[str],
        multi_label: bool = False,
        include_scores: bool = False,
        threshold: float = 0.5,
        min_score: float | None = None,
    ) -> None:
        self.prefix = prefix
        self.labels = labels
        self.multi_label = multi_label
        self.include_scores = include_scores
        self.threshold = threshold
        self.min_score = min_score

    def fields(self) -> list[pa.Field]:
        return classify_fields(self.prefix, self.labels, self.multi_label, self.include_scores)

    def columns(self, outputs: np.ndarray, missing: np.ndarray) -> list[pa.Array]:
        names = pa.array(self.labels, pa.string())
        best = outputs.argmax(axis=1) if len(self.labels) else np.zeros(len(outputs), np.int64)
        score = outputs.max(axis=1).astype(np.float32)
        unlabelled = missing if self.min_score is None else missing | (score < self.min_score)
        mask = pa.array(missing)
        columns = {
            LABEL: names.take(pa.array(best, mask=unlabelled)),
            SCORE: pa.array(score, mask=missing),
        }
        if self.include_scores:
            flat = pa.array(outputs.reshape(-1).astype(np.float32))
            columns[SCORES] = pa.FixedSizeListArray.from_arrays(flat, len(self.labels), mask=mask)
        if self.multi_label:
            hits = (outputs >= self.threshold) & ~missing[:, None]
            row, col = np.nonzero(hits)
            offsets = np.zeros(len(outputs) + 1, dtype=np.int32)
            np.cumsum(np.bincount(row, minlength=len(outputs)), out=offsets[1:])
            columns[LABELS] = pa.ListArray.from_arrays(
                pa.array(offsets), names.take(pa.array(col)), mask=mask
            )
        return [columns[f.name.removeprefix(self.prefix)] for f in self.fields()]
