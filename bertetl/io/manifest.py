"""Partition manifests: what was enriched from which inputs, with which model and config.

A `_manifest.json` sits beside each committed partition's data. It is written into the staged
partition last, so a partition folder that has one is complete. A later run compares it with
the partition's current input files, model and config to decide whether to skip it.

A manifest is a claim about the files, not the files: before a partition is skipped (or read
by `bertetl summary`), `verify_outputs` checks that the outputs it lists are still there as
they were committed (version 2 records each output's size, mtime, SHA-256 and rows).

Besides the row accounting it keeps what drift reports compare across partitions
(`bertetl.reports.drift`): the label counts, the mean embedding (the centroid) and the mean
score, each mean with the rows it is over. Fields added later have defaults, so earlier
manifests still load (and the version stays: the new fields change no check).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from bertetl.config import EngineConfig
from bertetl.errors import CommitError, InputError
from bertetl.io.commit import LOCK_NAME
from bertetl.io.stores.locations import Location, TableRef, is_remote, is_table, storage_error
from bertetl.output_options import output_payload
from bertetl.results import ColumnSum

if TYPE_CHECKING:
    from bertetl.io.stores.locations import Location
    from bertetl.io.tables import TableCommit

MANIFEST_NAME = "_manifest.json"
#: 1: no output fingerprints; 2: `output_files` (size, mtime, SHA-256, rows of each output).
MANIFEST_VERSION = 2


class FileFingerprint(BaseModel):
    """One input file as it was when enriched: path under the source root, size, mtime, hash."""

    model_config = ConfigDict(frozen=True)

    relative: str
    size: int
    mtime_ns: int
    sha256: str


class OutputFingerprint(BaseModel):
    """One committed output file: path in the partition folder, size, mtime, hash and rows."""

    model_config = ConfigDict(frozen=True)

    relative: str
    size: int
    mtime_ns: int
    sha256: str
    rows: int


def _float32_values(values: np.ndarray) -> list[float]:
    """float32 values as the shortest floats that read back as the same float32 (`0.1`, not
    `0.10000000149011612`)."""
    return [float(str(value)) for value in values.astype(np.float32)]


class EmbeddingMean(BaseModel):
    """The mean of an embedding column (the centroid, float32 values) over the `count` rows
    with an embedding; the means of partitions combine as count-weighted means."""

    model_config = ConfigDict(frozen=True)

    count: int
    mean: list[float]

    @classmethod
    def of(cls, column_sum: ColumnSum) -> EmbeddingMean:
        mean = column_sum.mean()
        return cls(count=column_sum.count, mean=[] if mean is None else _float32_values(mean))


class ScoreMean(BaseModel):
    """The mean of a score column (float32) over the `count` rows with a score."""

    model_config = ConfigDict(frozen=True)

    count: int
    mean: float

    @classmethod
    def of(cls, column_sum: ColumnSum) -> ScoreMean:
        mean = column_sum.mean()
        return cls(count=column_sum.count, mean=0.0 if mean is None else _float32_values(mean)[0])


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
    #: Rows inferred in this run whose text the model did not see whole (reused rows keep
    #: their earlier outputs and are not counted again).
    rows_truncated: int = 0
    inputs: list[FileFingerprint] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    output_files: list[OutputFingerprint] = Field(default_factory=list)
    models: dict[str, str] = Field(default_factory=dict)
    config_hash: str = ""
    label_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    #: The mean embedding and the mean score of the partition's outputs, by column (every
    #: row written counts, reused rows too; rows without a value do not). Empty in
    #: manifests written before they were kept, and for a column the run does not write.
    embedding_means: dict[str, EmbeddingMean] = Field(default_factory=dict)
    score_means: dict[str, ScoreMean] = Field(default_factory=dict)
    #: `--embed-precision int8/uint8`: each embedding column's per-dimension [minimums,
    #: maximums] the run calibrated, which later runs with the same config reuse. Left out
    #: of the file when there are none (manifests of other runs are as they were).
    embedding_ranges: dict[str, list[list[float]]] = Field(default_factory=dict)
    started: str = ""
    finished: str = ""
    seconds: float = 0.0
    #: What the partition cost: the real tokens its inferred rows took through the models and
    #: the seconds the models ran on the device (GPU or CPU). 0 in manifests written before.
    tokens: int = 0
    device_seconds: float = 0.0
    #: What one output row is (`--emit`): `rows`, or token windows (then `rows_out` counts
    #: the window rows written for the `rows_in` rows read). Left out of the file for `rows`.
    emit: str = "rows"

    @model_serializer(mode="wrap")
    def _without_empty_ranges(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`embedding_ranges` only where a run calibrated some; `emit` only when not rows."""
        data: dict[str, Any] = handler(self)
        if not data.get("embedding_ranges"):
            data.pop("embedding_ranges", None)
        if data.get("emit") == "rows":
            data.pop("emit", None)
        return data

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


def fingerprint_source(
    file: object, relative: str, known: FileFingerprint | None = None
) -> FileFingerprint:
    """`fingerprint_file` for a `SourceFile` on any filesystem: on an object store the size
    and last-modified time come from one listing call, and the object is read (streamed)
    for its SHA-256 only when they moved."""
    filesystem = getattr(file, "filesystem", None)
    if filesystem is None:
        return fingerprint_file(file.path, relative, known)  # type: ignore[attr-defined]
    location: Location = file.location  # type: ignore[attr-defined]
    info = location.info()
    size, mtime_ns = int(info.size or 0), int(info.mtime_ns or 0)
    if known is not None and (known.size, known.mtime_ns) == (size, mtime_ns):
        sha256 = known.sha256
    else:
        sha256 = _remote_sha256(location)
    return FileFingerprint(relative=relative, size=size, mtime_ns=mtime_ns, sha256=sha256)


def _remote_sha256(location: Location) -> str:
    import pyarrow as pa

    digest = hashlib.sha256()
    try:
        with location.fs.open_input_stream(location.path) as stream:
            while chunk := stream.read(8 << 20):
                digest.update(chunk)
    except (OSError, pa.ArrowException) as e:
        raise storage_error(location, "cannot read", e) from e
    return digest.hexdigest()


def fingerprint_output(path: str | os.PathLike[str] | Location, relative: str) -> OutputFingerprint:
    """Size, mtime, SHA-256 and row count (from the Parquet footer) of a written output file
    (local, or an object staged on a store: read through its filesystem). Raises `OSError` or
    `pyarrow.ArrowException` when it cannot be read."""
    import pyarrow.parquet as pq

    from bertetl.io.stores.locations import is_remote

    if is_remote(path):
        return _fingerprint_object(path, relative)  # type: ignore[arg-type]
    info = os.stat(path)
    rows = pq.read_metadata(path).num_rows
    return OutputFingerprint(
        relative=relative,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        sha256=file_sha256(path),
        rows=rows,
    )


def _fingerprint_object(location: Location, relative: str) -> OutputFingerprint:
    """`fingerprint_output` of an object on a store: one read of it for the hash, and its
    footer."""
    import pyarrow.parquet as pq

    info = location.fs.get_file_info(location.path)
    digest = hashlib.sha256()
    with location.fs.open_input_stream(location.path) as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    with location.fs.open_input_file(location.path) as handle:
        rows = pq.read_metadata(handle).num_rows
    return OutputFingerprint(
        relative=relative,
        size=int(info.size or 0),
        mtime_ns=int(info.mtime_ns or 0),
        sha256=digest.hexdigest(),
        rows=rows,
    )


@dataclass(frozen=True)
class OutputDamage:
    """How a committed output differs from its manifest's record (`relative` empty: the
    partition's outputs as a whole, e.g. a row count that does not add up)."""

    relative: str
    problem: str

    def __str__(self) -> str:
        return f"{self.relative} {self.problem}" if self.relative else self.problem


def _inside(relative: str) -> bool:
    path = PurePosixPath(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts


def _first_line(error: BaseException) -> str:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _stat_problem(path: Path) -> tuple[os.stat_result | None, str | None]:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({_first_line(e)})"
    if not stat.S_ISREG(info.st_mode):
        return None, "not a file"
    return info, None


def _fingerprint_problem(path: Path, known: OutputFingerprint) -> str | None:
    """Size first (one stat); the content is re-hashed only when the mtime moved, as for
    inputs: a file rewritten in place with the same size shows a new mtime."""
    info, problem = _stat_problem(path)
    if info is None:
        return problem
    if info.st_size < known.size:
        return f"truncated ({info.st_size:,} of {known.size:,} bytes)"
    if info.st_size != known.size:
        return f"changed ({info.st_size:,} bytes, {known.size:,} recorded)"
    if info.st_mtime_ns != known.mtime_ns:
        try:
            digest = file_sha256(path)
        except OSError as e:
            return f"unreadable ({_first_line(e)})"
        if digest != known.sha256:
            return "changed (same size, different SHA-256)"
    return None


def _footer_damage(folder: Path, manifest: Manifest) -> list[OutputDamage]:
    """Version 1 (no fingerprints): every listed output must have a readable Parquet footer,
    and their rows must add up to `rows_out`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    damage: list[OutputDamage] = []
    rows = 0
    for relative in manifest.outputs:
        if not _inside(relative):
            damage.append(OutputDamage(relative, "is not inside the partition folder"))
            continue
        info, problem = _stat_problem(folder / relative)
        if info is not None:
            try:
                rows += pq.read_metadata(folder / relative).num_rows
            except (pa.ArrowException, OSError) as e:
                problem = f"unreadable ({_first_line(e)})"
        if problem is not None:
            damage.append(OutputDamage(relative, problem))
    if not damage and rows != manifest.rows_out:
        claim = f"outputs hold {rows:,} rows, the manifest says {manifest.rows_out:,}"
        damage.append(OutputDamage("", claim))
    return damage


def _remote_damage(folder: Location, manifest: Manifest) -> list[OutputDamage]:
    """`verify_outputs` on an object store: one listing of the partition's prefix gives
    every output's size and last-modified time; an object whose time moved is re-hashed."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        listed = folder.fs.get_file_info(
            pafs.FileSelector(folder.path, recursive=True, allow_not_found=True)
        )
    except (OSError, pa.ArrowException) as e:
        raise storage_error(folder, "cannot list", e) from e
    found = {i.path[len(folder.path) + 1 :]: i for i in listed if i.type == pafs.FileType.File}
    known = {f.relative: f for f in manifest.output_files}
    damage: list[OutputDamage] = []
    for relative in manifest.outputs:
        fingerprint, info = known.get(relative), found.get(relative)
        problem: str | None = None
        if not _inside(relative):
            problem = "is not inside the partition folder"
        elif fingerprint is None:
            problem = "has no fingerprint in the manifest"
        elif info is None:
            problem = "missing"
        elif info.size != fingerprint.size:
            size = int(info.size or 0)
            problem = (
                f"truncated ({size:,} of {fingerprint.size:,} bytes)"
                if size < fingerprint.size
                else f"changed ({size:,} bytes, {fingerprint.size:,} recorded)"
            )
        elif info.mtime_ns != fingerprint.mtime_ns:
            if _remote_sha256(folder / relative) != fingerprint.sha256:
                problem = "changed (same size, different SHA-256)"
        if problem is not None:
            damage.append(OutputDamage(relative, problem))
    return damage


def verify_outputs(
    folder: str | os.PathLike[str] | Location | TableCommit, manifest: Manifest
) -> list[OutputDamage]:
    """How the outputs `manifest` lists differ from the files in `folder`; empty when they
    verify.

    Version 2: each output must exist with its recorded size, and its SHA-256 is compared
    when its mtime moved (one `stat` per file otherwise). Version 1 manifests recorded no
    fingerprints: their outputs' Parquet footers are read, and the rows must add up to
    `rows_out` (a same-size rewrite is not seen; the next commit records fingerprints).

    For a table DEST, `folder` is the `TableCommit` that carries the manifest: the
    partition's data files must be exactly those that commit added (`commit_problem`).
    """
    from bertetl.io.tables import TableCommit, commit_problem

    if isinstance(folder, TableCommit):
        changed = commit_problem(folder, manifest.rows_out)
        return [] if changed is None else [OutputDamage("", changed)]
    if manifest.version >= 2 and (wrong := _count_problem(manifest)) is not None:
        return [OutputDamage("", wrong)]
    if is_remote(folder):
        assert isinstance(folder, Location)
        return _remote_damage(folder, manifest)
    folder = Path(folder)
    if manifest.version < 2:
        return _footer_damage(folder, manifest)
    known = {f.relative: f for f in manifest.output_files}
    damage: list[OutputDamage] = []
    for relative in manifest.outputs:
        fingerprint = known.get(relative)
        if not _inside(relative):
            problem: str | None = "is not inside the partition folder"
        elif fingerprint is None:
            problem = "has no fingerprint in the manifest"
        else:
            problem = _fingerprint_problem(folder / relative, fingerprint)
        if problem is not None:
            damage.append(OutputDamage(relative, problem))
    return damage


def _count_problem(manifest: Manifest) -> str | None:
    """Why the manifest's own row counts disagree (every row in is a row out, or at least
    one window row with `--emit windows`, and the rows out are those its output
    fingerprints hold), or None: a manifest edited by hand."""
    held = sum(f.rows for f in manifest.output_files)
    rows_in_out = (
        manifest.rows_in == manifest.rows_out
        if manifest.emit == "rows"
        else manifest.rows_in <= manifest.rows_out
    )
    if manifest.rows_out != held or not rows_in_out:
        return (
            f"the manifest's counts disagree (rows_in {manifest.rows_in}, rows_out "
            f"{manifest.rows_out}, its outputs {held} rows)"
        )
    return None


def verified_outputs(manifest: Manifest, damage: list[OutputDamage]) -> list[str]:
    """The listed outputs that verified: all but the damaged ones, none when the damage is
    to the outputs as a whole."""
    if any(not d.relative for d in damage):
        return []
    damaged = {d.relative for d in damage}
    return [name for name in manifest.outputs if name not in damaged]


def inputs_fingerprint(inputs: list[FileFingerprint]) -> str:
    """One hash for a partition's inputs: their paths and contents (not their mtimes)."""
    digest = hashlib.sha256()
    for item in sorted(inputs, key=lambda f: f.relative):
        digest.update(f"{item.relative}\0{item.sha256}\n".encode())
    return digest.hexdigest()


def model_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 over a model directory's files (names and contents); hidden files and
    bertetl's training_metrics.json and eval/ report (written beside the weights, rewritten
    by `bertetl evaluate --out MODEL/eval`) are left out."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        hidden = relative.startswith(".") or "/." in relative
        if hidden or relative == "training_metrics.json" or relative.startswith("eval/"):
            continue
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def config_hash(config: EngineConfig, models: dict[str, str]) -> str:
    """Hash of the options that shape the output (as each `EngineConfig` field declares it:
    `bertetl.output_options`) plus the models' fingerprints."""
    payload = output_payload(config)
    payload["models"] = dict(sorted(models.items()))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_manifest(folder: str | os.PathLike[str] | Location) -> Manifest | None:
    """The manifest committed in `folder`, or None when there is none (or it is unreadable,
    which then counts as never committed)."""
    if is_remote(folder):
        assert isinstance(folder, Location)
        location = folder / MANIFEST_NAME
        try:
            return Manifest.model_validate_json(location.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        except OSError as e:  # pyarrow reports a missing object as an OSError too
            if location.info().type.name == "NotFound":
                return None
            raise storage_error(location, "cannot read", e) from e
    path = Path(folder) / MANIFEST_NAME
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def _remote_manifests(dest: Location, column: str | None) -> dict[str, tuple[Location, Manifest]]:
    """`committed_manifests` on an object store: one recursive listing; hidden prefixes and
    prefixes below DEST holding their own `.bertetl.lock` (another DEST) are skipped."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        listed = dest.fs.get_file_info(
            pafs.FileSelector(dest.path, recursive=True, allow_not_found=True)
        )
    except (OSError, pa.ArrowException) as e:
        raise storage_error(dest, "cannot list", e) from e
    relatives = sorted(i.path[len(dest.path) + 1 :] for i in listed if i.type == pafs.FileType.File)
    nested = [r[: -len(LOCK_NAME)] for r in relatives if r.endswith("/" + LOCK_NAME)]
    found: dict[str, tuple[Location, Manifest]] = {}
    for relative in relatives:
        parts = PurePosixPath(relative).parts
        if parts[-1] != MANIFEST_NAME or any(p.startswith(".") for p in parts[:-1]):
            continue
        if any(relative.startswith(prefix) for prefix in nested):
            continue
        folder = dest / str(PurePosixPath(relative).parent)
        manifest = read_manifest(folder)
        if manifest is not None and column in (None, manifest.partition_column):
            _add_manifest(found, dest, folder, manifest)
    return found


def _add_manifest(found: dict[str, Any], dest: object, folder: Any, manifest: Manifest) -> None:
    """Add a partition's committed folder to `found`; a value already found in another folder
    is an `InputError`: readers of DEST would see its rows twice."""
    earlier = found.setdefault(manifest.partition, (folder, manifest))[0]
    if earlier != folder:
        raise InputError(
            f"DEST {dest} holds partition {manifest.partition_column}={manifest.partition} in "
            f"two folders, {earlier} and {folder} (two spellings of one value), so its readers "
            "see those rows twice; remove the older folder, then rerun"
        )


def _table_manifests(dest: TableRef, column: str | None) -> dict[str, tuple[object, Manifest]]:
    """`committed_manifests` of a table: the newest manifest of each partition found in the
    table's commit metadata (`bertetl.io.tables.commit_records`)."""
    from bertetl.io.tables import commit_records

    if column is None:
        raise CommitError(f"{dest}: give the partition column to read a table's manifests")
    found: dict[str, tuple[object, Manifest]] = {}
    for value, commit in commit_records(dest, column).items():
        try:
            found[value] = (commit, Manifest.model_validate_json(commit.manifest_json))
        except ValueError:
            continue  # an unreadable manifest counts as never committed
    return found


def committed_manifests(
    dest: str | os.PathLike[str] | Location | TableRef, column: str | None = None
) -> dict[str, tuple[Path, Manifest]]:
    """DEST's readable manifests (of partition column `column`, or of any column) by
    partition value, with the folder each sits in.

    Hidden folders are skipped, and so is any folder below DEST holding its own
    `.bertetl.lock`: another run's DEST nested in this one, whose partitions are not ours.

    A table DEST (`TableRef`) keeps its manifests in its commits' metadata: the "folder" is
    then the `bertetl.io.tables.TableCommit` each was read from (`verify_outputs` takes it).
    """
    if is_table(dest):
        assert isinstance(dest, TableRef)
        return _table_manifests(dest, column)  # type: ignore[return-value]
    if is_remote(dest):
        assert isinstance(dest, Location)
        return _remote_manifests(dest, column)  # type: ignore[return-value]
    found: dict[str, tuple[Path, Manifest]] = {}
    if not os.path.isdir(dest):
        return found
    for folder, dirs, names in os.walk(dest):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and not (Path(folder) / d / LOCK_NAME).exists()
        )
        if MANIFEST_NAME not in names:
            continue
        manifest = read_manifest(folder)
        if manifest is not None and column in (None, manifest.partition_column):
            _add_manifest(found, dest, Path(folder), manifest)
    return found


def write_manifest(folder: str | os.PathLike[str] | Location, manifest: Manifest) -> None:
    """Write and fsync the manifest (into a staged partition, before it is swapped in); on
    an object store, one `PutObject` into the live partition: its commit point."""
    if is_remote(folder):
        from bertetl.io.stores.objects import put_bytes

        assert isinstance(folder, Location)
        put_bytes(folder / MANIFEST_NAME, manifest.model_dump_json(indent=2).encode())
        return
    path = Path(folder) / MANIFEST_NAME
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(manifest.model_dump_json(indent=2))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as e:
        raise CommitError(f"cannot write manifest {path}: {e}") from e
