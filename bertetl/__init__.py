"""bertetl: stream Parquet text tables through BERT encoders, atomically.

Public API: `enrich()`, `train()`, `EngineConfig`, `TrainConfig`, and the errors. Heavy
libraries (torch, transformers) load only when a model is set up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bertetl.config import EngineConfig, TrainConfig
from bertetl.errors import BertEtlError, CommitError, FilesFailedError, InputError, ModelError

if TYPE_CHECKING:
    from bertetl.results import EnrichReport
    from bertetl.training.train import TrainReport

__all__ = [
    "BertEtlError",
    "CommitError",
    "EngineConfig",
    "FilesFailedError",
    "InputError",
    "ModelError",
    "TrainConfig",
    "enrich",
    "train",
]


def enrich(source: str, dest: str, config: EngineConfig, **kwargs: Any) -> EnrichReport:
    """Enrich every Parquet file under `source` into `dest`; see `bertetl.runs.enrich.enrich`."""
    from bertetl.runs.enrich import enrich as run

    return run(source, dest, config, **kwargs)


def train(
    table: str, model_out: str, config: TrainConfig, storage_options: dict[str, str] | None = None
) -> TrainReport:
    """Fine-tune a classifier (TABLE may be an object-store URI, opened with
    `storage_options`); see `bertetl.training.train.train`."""
    from bertetl.training.train import train as run

    return run(table, model_out, config, storage_options)
