"""Prefect flows over the bertetl engine: analyst `enrich`, `backfill`, nightly `incremental`.

Flows only cut the work, call the engine and add retries, progress and reporting; every
Arrow and model step lives in `bertetl`.
"""

from bertetl.flows.enrich import enrich_flow
from bertetl.flows.partitioned import backfill_flow, incremental_flow

__all__ = ["backfill_flow", "enrich_flow", "incremental_flow"]
