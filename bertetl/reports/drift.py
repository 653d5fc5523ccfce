"""Drift per partition, from DEST's manifests: is tonight's output like the last week's?

Each committed partition is compared with its *baseline*: the `window` committed partitions
before it (partition values in string order) whose manifests name the same models. Their label
counts are pooled, and their mean embeddings averaged, weighted by the rows behind each.

- `js_divergence`: the Jensen-Shannon divergence, base 2, between the partition's label
  shares and the baseline's: `scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2` (scipy
  returns the distance, the divergence's square root). 0 is the same mix, 1 no label in
  common.
- `cosine_distance`: `scipy.spatial.distance.cosine` between the partition's mean embedding
  and the baseline's. 0 is the same direction; sampling noise alone is about 2/rows for
  all-MiniLM-L6-v2 (0.02 at 100 rows, 0.002 at 1,000), a change of topic 0.2 to 0.3.

A metric is null (None) where it does not apply: no baseline (the first partition, or the
first after a model change), no labels (an embed-only run) or no embeddings (a classify-only
run) in the partition or its baseline. A partition is flagged when a metric is above its
threshold. Drift is a warning, never an error: runs and `bertetl summary` report it and go on.
"""

from __future__ import annotations

import math
import os
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bertetl.io.destinations import as_destination
from bertetl.io.manifest import Manifest
from bertetl.io.stores.locations import Location
from bertetl.io.write import write_file
from bertetl.schema import EMBEDDING, LABEL, SCORE

#: Where a run writes its drift plot, inside DEST: hidden, so readers and the partition
#: checks skip it (as they skip `.bertetl.lock`).
REPORTS_FOLDER = ".bertetl-reports"
PLOT_NAME = "drift.png"
#: Partition names on the plot's axis, at most (every k-th is named beyond).
AXIS_NAMES = 40
DPI = 100


class DriftOptions(BaseModel):
    """How partitions are compared with the ones before them, and when one is flagged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(
        7,
        ge=1,
        description="Drift baseline: the committed partitions before each one (same models) "
        "that it is compared with.",
    )
    js_threshold: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Flag a partition whose label mix has a Jensen-Shannon divergence (base 2) "
        "from its baseline's above this (0.01: about a 12-point move in a two-label mix).",
    )
    cosine_threshold: float = Field(
        0.05,
        ge=0,
        le=2,
        description="Flag a partition whose mean embedding has a cosine distance from its "
        "baseline's above this.",
    )


@dataclass(frozen=True)
class PartitionDrift:
    """One partition against its baseline; metrics are None where they do not apply."""

    column: str
    partition: str
    rows: int
    baseline: int  # partitions in the baseline
    js_divergence: float | None
    cosine_distance: float | None
    mean_score: float | None
    shares: dict[str, float] = field(default_factory=dict)  # label shares, sorted by label
    reasons: tuple[str, ...] = ()  # why it is flagged

    @property
    def name(self) -> str:
        return f"{self.column}={self.partition}"

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _js_divergence(counts: dict[str, int], pooled: dict[str, int]) -> float | None:
    """The JS divergence (base 2) of two label counts; None when either has no label."""
    from scipy.spatial.distance import jensenshannon

    labels = sorted(set(counts) | set(pooled))
    p = np.array([counts.get(label, 0) for label in labels], dtype=np.float64)
    q = np.array([pooled.get(label, 0) for label in labels], dtype=np.float64)
    if not p.sum() or not q.sum():
        return None
    return float(jensenshannon(p, q, base=2) ** 2)


def _cosine_distance(mean: list[float], baseline: list[tuple[int, list[float]]]) -> float | None:
    """Cosine distance of `mean` from the count-weighted mean of the baseline's means (those
    of the same length)."""
    from scipy.spatial.distance import cosine

    same = [(count, values) for count, values in baseline if count and len(values) == len(mean)]
    if not mean or not same:
        return None
    weights = np.array([count for count, _ in same], dtype=np.float64)
    centroid = np.average(np.array([values for _, values in same]), axis=0, weights=weights)
    distance = float(cosine(np.asarray(mean, dtype=np.float64), centroid))
    return None if math.isnan(distance) else distance


def partition_drift(
    manifests: Sequence[Manifest], options: DriftOptions, prefix: str = ""
) -> list[PartitionDrift]:
    """Each partition's drift against its baseline (see the module's docstring), in
    partition order; `prefix` names the columns (`--prefix`)."""
    label, embedding, score = prefix + LABEL, prefix + EMBEDDING, prefix + SCORE
    found: list[PartitionDrift] = []
    earlier: dict[tuple[tuple[str, str], ...], deque[Manifest]] = {}  # by models
    for manifest in sorted(manifests, key=lambda m: m.partition):
        window = earlier.setdefault(
            tuple(sorted(manifest.models.items())), deque(maxlen=options.window)
        )
        baseline = list(window)
        window.append(manifest)
        counts = manifest.label_counts.get(label, {})
        pooled: dict[str, int] = {}
        for before in baseline:
            for name, count in before.label_counts.get(label, {}).items():
                pooled[name] = pooled.get(name, 0) + count
        js = _js_divergence(counts, pooled)
        mean = manifest.embedding_means.get(embedding)
        baseline_means = [
            (m.embedding_means[embedding].count, m.embedding_means[embedding].mean)
            for m in baseline
            if embedding in m.embedding_means
        ]
        distance = _cosine_distance(mean.mean, baseline_means) if mean is not None else None
        reasons = []
        if js is not None and js > options.js_threshold:
            reasons.append(f"labels: JS divergence {js:.4f} > {options.js_threshold:g}")
        if distance is not None and distance > options.cosine_threshold:
            reasons.append(
                f"embedding: cosine distance {distance:.4f} > {options.cosine_threshold:g}"
            )
        total = sum(counts.values())
        score_mean = manifest.score_means.get(score)
        found.append(
            PartitionDrift(
                column=manifest.partition_column,
                partition=manifest.partition,
                rows=manifest.rows_out,
                baseline=len(baseline),
                js_divergence=js,
                cosine_distance=distance,
                mean_score=score_mean.mean if score_mean is not None else None,
                shares={name: counts[name] / total for name in sorted(counts)} if total else {},
                reasons=tuple(reasons),
            )
        )
    return found


@dataclass
class DriftReport:
    """The drift of a DEST's partitions (those in a run's range), with its options."""

    column: str
    options: DriftOptions
    partitions: list[PartitionDrift]
    note: str = ""  # why there is no table, when there is none

    @property
    def flagged(self) -> list[PartitionDrift]:
        return [p for p in self.partitions if p.flagged]

    def records(self, digits: int = 6) -> list[dict[str, Any]]:
        """One dict per partition (a Prefect table artifact's rows), figures rounded."""

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, digits)

        return [
            {
                "partition": p.partition,
                "rows": p.rows,
                "baseline": p.baseline,
                "js_divergence": rounded(p.js_divergence),
                "cosine_distance": rounded(p.cosine_distance),
                "mean_score": rounded(p.mean_score),
                "flagged": p.flagged,
                "reason": p.reason,
            }
            for p in self.partitions
        ]

    def frame(self) -> Any:
        """The table as a polars DataFrame (what `bertetl summary` prints)."""
        import polars as pl

        schema = {
            "partition": pl.String,
            "rows": pl.Int64,
            "baseline": pl.Int64,
            "js_divergence": pl.Float64,
            "cosine_distance": pl.Float64,
            "mean_score": pl.Float64,
            "flagged": pl.Boolean,
            "reason": pl.String,
        }
        return pl.DataFrame(self.records(), schema=schema, orient="row")

    def describe(self) -> str:
        """The baseline and thresholds, in words."""
        o = self.options
        return (
            f"each {self.column} partition against the {o.window} committed partition(s) "
            f"before it (same models); flagged above a JS divergence of {o.js_threshold:g} "
            f"(label mix) or a cosine distance of {o.cosine_threshold:g} (mean embedding)"
        )

    def lines(self) -> list[str]:
        """The partitions to look at, one line each (empty: none)."""
        return [f"{p.name}: {p.reason}" for p in self.flagged]

    def draw(self, path: str | os.PathLike[str] | Location) -> Any:
        """Draw label shares per partition (stacked bars) over the drift metrics and their
        thresholds, flagged partitions in red, as a PNG at `path` (written atomically; an
        object-store `Location` is drawn locally and uploaded whole); None when there is
        nothing to draw."""
        return write_file(path, lambda local: draw_drift(self, local))


def drift_report(
    dest: str | os.PathLike[str],
    column: str | None,
    options: DriftOptions,
    prefix: str = "",
    start: str | None = None,
    end: str | None = None,
) -> DriftReport:
    """The drift of DEST's committed partitions of `column` in [start, end], each against
    the partitions before it (also those before `start`). `column` None: the partition
    column of DEST's manifests, when they all have the same one."""
    manifests = as_destination(dest).committed_manifests(column)
    columns = sorted({m.partition_column for _, m in manifests.values()})
    if column is None and len(columns) > 1:
        note = f"manifests of several partition columns ({', '.join(columns)}): give one"
        return DriftReport("", options, [], note)
    chosen = column if column is not None else (columns[0] if columns else "")
    if not manifests:
        return DriftReport(chosen, options, [], "no committed partitions (no manifests)")
    rows = [
        p
        for p in partition_drift([m for _, m in manifests.values()], options, prefix)
        if (start is None or p.partition >= start) and (end is None or p.partition <= end)
    ]
    return DriftReport(chosen, options, rows)


def plot_path(dest: object) -> Any:
    """Where a run over DEST writes its drift plot (replaced by each run): a `Path`, a
    `Location` for an object-store DEST, None for a DEST with no folder (a table)."""
    return as_destination(dest).file_path(f"{REPORTS_FOLDER}/{PLOT_NAME}")


def draw_drift(report: DriftReport, path: Path) -> Path | None:
    """See `DriftReport.draw`."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    rows = report.partitions
    labels = sorted({name for p in rows for name in p.shares})
    metrics = [
        (title, values, threshold)
        for title, values, threshold in (
            (
                "JS divergence\n(label mix)",
                [p.js_divergence for p in rows],
                report.options.js_threshold,
            ),
            (
                "cosine distance\n(mean embedding)",
                [p.cosine_distance for p in rows],
                report.options.cosine_threshold,
            ),
        )
        if any(v is not None for v in values)
    ]
    panels = int(bool(labels)) + len(metrics)
    if not rows or not panels:
        return None
    n = len(rows)
    x = np.arange(n)
    flagged = np.array([p.flagged for p in rows])
    figure = Figure(
        figsize=(min(max(6.0, 0.3 * n + 3.0), 30.0), 1.0 + 2.2 * panels), layout="constrained"
    )
    axes = list(figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0])
    if labels:
        ax = axes.pop(0)
        colors = colormaps["tab10" if len(labels) <= 10 else "tab20"]
        bottom = np.zeros(n)
        for k, name in enumerate(labels):
            share = np.array([p.shares.get(name, 0.0) for p in rows])
            ax.bar(x, share, bottom=bottom, width=0.8, label=name, color=colors(k % colors.N))
            bottom += share
        if flagged.any():
            ax.plot(x[flagged], np.full(flagged.sum(), 1.05), "v", color="red", label="flagged")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("label share")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    for ax, (title, values, threshold) in zip(axes, metrics, strict=True):
        y = np.array([np.nan if v is None else v for v in values])
        ax.plot(x, y, "o-", color="C0", markersize=4, label="drift")
        over = ~np.isnan(y) & (np.nan_to_num(y) > threshold)
        ax.plot(x[over], y[over], "o", color="red", label="over the threshold")
        ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label="threshold")
        ax.set_ylabel(title)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    bottom_axis = figure.axes[panels - 1]
    step = max(1, math.ceil(n / AXIS_NAMES))
    bottom_axis.set_xticks(x[::step], [p.partition for p in rows][::step], rotation=60, ha="right")
    for tick, at in zip(bottom_axis.get_xticklabels(), x[::step], strict=True):
        if flagged[at]:
            tick.set_color("red")
    bottom_axis.set_xlabel(report.column or "partition")
    figure.suptitle(
        f"Drift per partition against the {report.options.window} before it "
        f"({int(flagged.sum())} flagged, in red)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        figure.savefig(temp, format="png", dpi=DPI)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path
