"""How a run reports to the data platform: OpenLineage events (`lineage`), Prometheus or OTLP
metrics (`metrics`), and what it cost (`cost`); `observe_run` wraps a run in all three."""

from __future__ import annotations

from bertetl.observe.cost import estimate_cost
from bertetl.observe.options import ObserveOptions
from bertetl.observe.run import RunObserver, observe_run

__all__ = ["ObserveOptions", "RunObserver", "estimate_cost", "observe_run"]
