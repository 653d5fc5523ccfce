"""Keyed runs (`--key`): rows identified by key across runs, so a nightly run over a table
that changes in place infers only new and changed text, deletes keys gone from SOURCE, and
infers each distinct text once (`plan` decides, `run` writes, `enrich` runs it all)."""

from __future__ import annotations

from bertetl.runs.keyed.enrich import KeyedReport, run_keyed
from bertetl.runs.keyed.plan import KeyedOptions

__all__ = ["KeyedOptions", "KeyedReport", "run_keyed"]
