"""Plan a partitioned run: compare each source partition with the manifest committed under
DEST, after checking that the outputs it lists are still as committed
(`sql/partitions_to_run.sql` decides), and say what to do with it and why."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import polars as pl
import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.engine.model_files import model_identity
from bertetl.io.destinations import Destination, as_destination
from bertetl.io.manifest import (
    FileFingerprint,
    Manifest,
    OutputDamage,
    config_hash,
    fingerprint_source,
    inputs_fingerprint,
    verified_outputs,
)
from bertetl.io.partitions import Partition, list_partitions
from bertetl.io.read import read_metadata
from bertetl.io.stores.locations import Location, TableRef
from bertetl.reports.sql import run_query


@dataclass(frozen=True)
class PartitionPlan:
    """One partition's planned action ('enrich', 'skip', 'orphan') and why; `damage`: how
    its committed outputs differ from their manifest (`previous`)."""

    column: str
    value: str
    action: str
    reason: str
    partition: Partition | None = None
    inputs: tuple[FileFingerprint, ...] = ()
    previous: Manifest | None = None
    damage: tuple[OutputDamage, ...] = ()

    @property
    def reusable_outputs(self) -> list[str]:
        """The previous commit's outputs that verified (their rows may be reused)."""
        if self.previous is None:
            return []
        return verified_outputs(self.previous, list(self.damage))

    @cached_property
    def rows(self) -> int:
        """Rows in the partition's input files, from their footers, read once (an unreadable
        footer counts 0 here; enriching the partition then fails naming the file)."""
        if self.partition is not None and self.partition.rows is not None:
            return self.partition.rows  # a table partition: from the table's metadata
        total = 0
        for file in self.partition.files if self.partition is not None else ():
            try:
                total += read_metadata(file).num_rows
            except (pa.ArrowException, OSError):
                continue
        return total


@dataclass
class Plan:
    """What a run over a partitioned source will do."""

    models: dict[str, str]
    config_hash: str
    partitions: list[PartitionPlan] = field(default_factory=list)
    #: int8/uint8 embedding ranges of earlier runs with this config (their manifests).
    embedding_ranges: dict[str, list[list[float]]] = field(default_factory=dict)

    def by_action(self, action: str) -> list[PartitionPlan]:
        return [p for p in self.partitions if p.action == action]


def model_fingerprints(config: EngineConfig) -> dict[str, str]:
    """Fingerprints of the configured models, by role (`embed`, `classify`); a Hub model's
    names the commit it resolved to (`engine.model_files.model_identity`)."""
    specs = config.model_specs()
    options = config.model_storage_options
    return {
        role: model_identity(spec, config.allow_pickle, options)
        for role, spec in specs.items()
        if spec
    }


#: Damaged files named in a plan's reason; the flow's warning names them all.
REASON_FILES = 3


def damage_text(damage: tuple[OutputDamage, ...] | list[OutputDamage]) -> str:
    """The damage in one line: the first few files and problems, then how many more."""
    text = "; ".join(str(d) for d in damage[:REASON_FILES])
    if len(damage) > REASON_FILES:
        text += f"; and {len(damage) - REASON_FILES} more file(s)"
    return text


def _tables(
    inputs: dict[str, tuple[FileFingerprint, ...]],
    committed: dict[str, Manifest],
    damage: dict[str, tuple],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The `source` and `manifests` tables `sql/partitions_to_run.sql` decides from."""
    source_table = pl.DataFrame(
        {
            "partition": list(inputs),
            "input_fingerprint": [inputs_fingerprint(list(files)) for files in inputs.values()],
        },
        schema={"partition": pl.String, "input_fingerprint": pl.String},
    )
    manifest_table = pl.DataFrame(
        {
            "partition": list(committed),
            "input_fingerprint": [m.input_fingerprint for m in committed.values()],
            "config_hash": [m.config_hash for m in committed.values()],
            "damage": [damage_text(damage[v]) or None for v in committed],
        },
        schema={
            "partition": pl.String,
            "input_fingerprint": pl.String,
            "config_hash": pl.String,
            "damage": pl.String,
        },
    )
    return source_table, manifest_table


def _at_dest_folder(partition: Partition, dest: Destination, folder: Any) -> Partition:
    """`partition`, committed to `folder` (DEST's folder for its value, relative to `dest`)
    when that is another spelling of its SOURCE folder's name (`a%20b` for `a b`)."""
    relative = dest.relative(folder)
    if relative == partition.folder:
        return partition
    return dataclasses.replace(partition, dest_name=relative)


def plan_partitions(
    source: str | os.PathLike[str] | Location | TableRef,
    dest: str | os.PathLike[str] | Location | TableRef,
    column: str,
    config: EngineConfig,
    start: str | None = None,
    end: str | None = None,
    force: bool = False,
    partitions: list[Partition] | None = None,
) -> Plan:
    """Compare the source's partitions in [start, end] with DEST's manifests (`partitions`:
    those partitions when already listed, e.g. by the run's checks).

    Input files are fingerprinted by size, mtime and SHA-256 (re-hashed only when size or
    mtime moved since the manifest), so a touched but identical file is not re-enriched.
    A committed partition's outputs are checked against its manifest (`verify_outputs`: a
    `stat` per file, a re-hash when its mtime moved); one that does not verify is redone
    ('damaged: ...').

    SOURCE and DEST may be tables (`TableRef`): a table SOURCE's fingerprints come from its
    metadata, a table DEST's manifests from its commits (docs/STORAGE.md).
    """
    models = model_fingerprints(config)
    plan = Plan(models, config_hash(config, models))
    if partitions is None:
        partitions = list_partitions(source, column, start, end)
    by_value = {p.value: p for p in partitions}
    folders: dict[str, Any] = {}
    committed: dict[str, Manifest] = {}
    destination = as_destination(dest)
    for value, (folder, manifest) in destination.committed_manifests(column).items():
        if (start is None or value >= start) and (end is None or value <= end):
            folders[value], committed[value] = folder, manifest
            if value in by_value and destination.capabilities.files:  # where DEST holds it
                by_value[value] = _at_dest_folder(by_value[value], destination, folder)
    plan.embedding_ranges = next(
        (m.embedding_ranges for m in committed.values() if m.config_hash == plan.config_hash),
        {},
    )
    damage = {
        value: tuple(destination.verify(folders[value], manifest))
        for value, manifest in committed.items()
    }
    inputs: dict[str, tuple[FileFingerprint, ...]] = {}
    for value, partition in by_value.items():
        if partition.inputs is not None:  # a table partition: from the table's metadata
            inputs[value] = partition.inputs
            continue
        known = {f.relative: f for f in committed[value].inputs} if value in committed else {}
        inputs[value] = tuple(
            fingerprint_source(f, partition.relative(f), known.get(partition.relative(f)))
            for f in partition.files
        )
    source_table, manifest_table = _tables(inputs, committed, damage)
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
                by_value.get(value),
                inputs.get(value, ()),
                committed.get(value),
                damage.get(value, ()),
            )
        )
    return plan
