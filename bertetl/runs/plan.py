"""Plan a partitioned run: compare each source partition with the manifest committed under
DEST (`sql/partitions_to_run.sql` decides) and say what to do with it and why."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import polars as pl
import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.engine.model_files import resolve_model_dir
from bertetl.io.manifest import (
    MANIFEST_NAME,
    FileFingerprint,
    Manifest,
    config_hash,
    fingerprint_file,
    inputs_fingerprint,
    model_fingerprint,
    read_manifest,
)
from bertetl.io.partitions import Partition, list_partitions
from bertetl.reports.sql import run_query


@dataclass(frozen=True)
class PartitionPlan:
    """One partition's planned action ('enrich', 'skip', 'orphan') and why."""

    column: str
    value: str
    action: str
    reason: str
    partition: Partition | None = None
    inputs: tuple[FileFingerprint, ...] = ()
    previous: Manifest | None = None

    @cached_property
    def rows(self) -> int:
        """Rows in the partition's input files, from their footers, read once (an unreadable
        footer counts 0 here; enriching the partition then fails naming the file)."""
        import pyarrow.parquet as pq

        total = 0
        for file in self.partition.files if self.partition is not None else ():
            try:
                total += pq.read_metadata(file.path).num_rows
            except (pa.ArrowException, OSError):
                continue
        return total


@dataclass
class Plan:
    """What a run over a partitioned source will do."""

    models: dict[str, str]
    config_hash: str
    partitions: list[PartitionPlan] = field(default_factory=list)

    def by_action(self, action: str) -> list[PartitionPlan]:
        return [p for p in self.partitions if p.action == action]


def model_fingerprints(config: EngineConfig) -> dict[str, str]:
    """Fingerprints of the configured models, by role (`embed`, `classify`)."""
    specs = {"embed": config.embed_model, "classify": config.classify_model}
    return {
        role: model_fingerprint(resolve_model_dir(spec, config.allow_pickle))
        for role, spec in specs.items()
        if spec
    }


def _committed_manifests(dest: Path, column: str) -> dict[str, Manifest]:
    found: dict[str, Manifest] = {}
    if not dest.is_dir():
        return found
    for path in sorted(dest.rglob(MANIFEST_NAME)):
        if any(part.startswith(".") for part in path.relative_to(dest).parts):
            continue
        manifest = read_manifest(path.parent)
        if manifest is not None and manifest.partition_column == column:
            found[manifest.partition] = manifest
    return found


def plan_partitions(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    column: str,
    config: EngineConfig,
    start: str | None = None,
    end: str | None = None,
    force: bool = False,
) -> Plan:
    """Compare the source's partitions in [start, end] with DEST's manifests.

    Input files are fingerprinted by size, mtime and SHA-256 (re-hashed only when size or
    mtime moved since the manifest), so a touched but identical file is not re-enriched.
    """
    models = model_fingerprints(config)
    plan = Plan(models, config_hash(config, models))
    partitions = {p.value: p for p in list_partitions(source, column, start, end)}
    committed = {
        value: manifest
        for value, manifest in _committed_manifests(Path(dest), column).items()
        if (start is None or value >= start) and (end is None or value <= end)
    }
    inputs: dict[str, tuple[FileFingerprint, ...]] = {}
    for value, partition in partitions.items():
        known = {f.relative: f for f in committed[value].inputs} if value in committed else {}
        inputs[value] = tuple(
            fingerprint_file(f.path, partition.relative(f), known.get(partition.relative(f)))
            for f in partition.files
        )
    source_table = pl.DataFrame(
        {
            "partition": list(partitions),
            "input_fingerprint": [inputs_fingerprint(list(inputs[v])) for v in partitions],
        },
        schema={"partition": pl.String, "input_fingerprint": pl.String},
    )
    manifest_table = pl.DataFrame(
        {
            "partition": list(committed),
            "input_fingerprint": [m.input_fingerprint for m in committed.values()],
            "config_hash": [m.config_hash for m in committed.values()],
        },
        schema={"partition": pl.String, "input_fingerprint": pl.String, "config_hash": pl.String},
    )
    decided = run_query(
        "partitions_to_run",
        {"source": source_table, "manifests": manifest_table},
        {"config_hash": plan.config_hash, "force": force},
    )
    for row in decided.iter_rows(named=True):
        value = row["partition"]
        plan.partitions.append(
            PartitionPlan(
                column,
                value,
                row["action"],
                row["reason"],
                partitions.get(value),
                inputs.get(value, ()),
                committed.get(value),
            )
        )
    return plan
