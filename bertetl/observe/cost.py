"""What a run cost: rows, real tokens through the models and device-seconds (GPU or CPU), per
partition and per run, and the estimate `--cost-per-hour` makes of them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


def estimate_cost(device_seconds: float, cost_per_hour: float | None) -> float | None:
    """The estimated cost of `device_seconds` at `cost_per_hour` (None without a price)."""
    if cost_per_hour is None:
        return None
    return round(device_seconds / 3600.0 * cost_per_hour, 6)


@dataclass
class RunCost:
    """Rows, tokens and device-seconds added up over partitions (or files)."""

    rows: int = 0
    tokens: int = 0
    device_seconds: float = 0.0

    def add(self, rows: int, tokens: int, device_seconds: float) -> None:
        self.rows += rows
        self.tokens += tokens
        self.device_seconds += device_seconds

    def to_dict(self, cost_per_hour: float | None = None) -> dict[str, Any]:
        """JSON-ready figures, with `estimated_cost` when a price is given."""
        figures: dict[str, Any] = {**asdict(self), "device_seconds": round(self.device_seconds, 3)}
        if cost_per_hour is not None:
            figures["estimated_cost"] = estimate_cost(self.device_seconds, cost_per_hour)
        return figures


def manifests_cost(
    manifests: Iterable[tuple[str, Any]], cost_per_hour: float | None = None
) -> list[dict[str, Any]]:
    """One row per `(partition, Manifest)`: its rows written, tokens and device-seconds (the
    run that committed it), with the estimate when a price is given; then a `total` row."""
    rows, total = [], RunCost()
    for partition, manifest in manifests:
        cost = RunCost(manifest.rows_out, manifest.tokens, manifest.device_seconds)
        total.add(cost.rows, cost.tokens, cost.device_seconds)
        rows.append({"partition": partition, **cost.to_dict(cost_per_hour)})
    if rows:
        rows.append({"partition": "total", **total.to_dict(cost_per_hour)})
    return rows
