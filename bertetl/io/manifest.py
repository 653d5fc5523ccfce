"""Partition manifests: what was enriched from which inputs, with which model and config.

A `_manifest.json` sits beside each committed partition's data. It is written into the staged
partition last, so a partition folder that has one is complete. A later run compares it with
the partition's current input files, model and config to decide whether to skip it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from bertetl.config import EngineConfig
from bertetl.errors import CommitError

MANIFEST_NAME = "_manifest.json"
MANIFEST_VERSION = 1

#: Engine options that change what is written. Device, batch sizes, workers and prefetching
#: only change speed (outputs agree to float rounding), so changing them does not re-enrich.
OUTPUT_OPTIONS = (
    "text_column",
    "dtype",
    "quantize",
    "max_length",
    "prefix",
    "include_scores",
    "multi_label_threshold",
)


class FileFingerprint(BaseModel):
    """One input file as it was when enriched: path under the source root, size, mtime, hash."""

    model_config = ConfigDict(frozen=True)

    relative: str
    size: int
    mtime_ns: int
    sha256: str


class Manifest(BaseModel):
    """The commit record of one enriched partition."""

    model_config = ConfigDict(extra="ignore")

    version: int = MANIFEST_VERSION
    partition_column: str
    partition: str
    rows_in: int = 0
    rows_out: int = 0
    rows_inferred: int = 0
    rows_reused: int = 0
    rows_failed: int = 0
    inputs: list[FileFingerprint] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    models: dict[str, str] = Field(default_factory=dict)
    config_hash: str = ""
    label_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    started: str = ""
    finished: str = ""
    seconds: float = 0.0

    @property
    def input_fingerprint(self) -> str:
        return inputs_fingerprint(self.inputs)


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint_file(
    path: str | os.PathLike[str], relative: str, known: FileFingerprint | None = None
) -> FileFingerprint:
    """Size, mtime and SHA-256 of a file; the hash is taken from `known` when size and
    mtime are unchanged (as make and rsync trust them), else read from the file."""
    stat = os.stat(path)
    if known is not None and (known.size, known.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        return FileFingerprint(
            relative=relative, size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=known.sha256
        )
    return FileFingerprint(
        relative=relative, size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=file_sha256(path)
    )


def inputs_fingerprint(inputs: list[FileFingerprint]) -> str:
    """One hash for a partition's inputs: their paths and contents (not their mtimes)."""
    digest = hashlib.sha256()
    for item in sorted(inputs, key=lambda f: f.relative):
        digest.update(f"{item.relative}\0{item.sha256}\n".encode())
    return digest.hexdigest()


def model_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 over a model directory's files (names and contents); hidden files and
    bertetl's training_metrics.json are left out."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(".") or "/." in relative or relative == "training_metrics.json":
            continue
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def config_hash(config: EngineConfig, models: dict[str, str]) -> str:
    """Hash of the options that shape the output plus the models' fingerprints."""
    payload = {name: getattr(config, name) for name in OUTPUT_OPTIONS}
    payload["models"] = dict(sorted(models.items()))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_manifest(folder: str | os.PathLike[str]) -> Manifest | None:
    """The manifest committed in `folder`, or None when there is none (or it is unreadable,
    which then counts as never committed)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    """Write and fsync the manifest (into a staged partition, before it is swapped in)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(manifest.model_dump_json(indent=2))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as e:
        raise CommitError(f"cannot write manifest {path}: {e}") from e
