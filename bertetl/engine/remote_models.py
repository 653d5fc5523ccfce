"""Model folders on object storage (`s3://`, `gs://`, `abfs://`), fetched once per machine.

A folder is listed (names, sizes, modification times: its listing key) and, the first time
that listing is seen on this machine, its loading files are downloaded into a staging folder,
fingerprinted by content (`model_fingerprint`) and moved to `CACHE/models/<fingerprint>`; the
listing key then names that fingerprint (`CACHE/models/listings/<key>`), so later runs, and
the other processes of this one, load the cached copy without a download. Two models with the
same files share one copy. The store is reached with the run's storage options
(`--storage-option`), else the store's standard credential chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path

from bertetl.config import EngineConfig
from bertetl.engine.hub import ALLOW_PATTERNS, PICKLE_PATTERNS
from bertetl.errors import ModelError
from bertetl.io.manifest import model_fingerprint
from bertetl.io.stores.locations import Location, is_uri, parse_location, storage_error

_lock = threading.Lock()


def with_storage_options(config: EngineConfig, options: Mapping[str, str] | None) -> EngineConfig:
    """`config` with the run's storage options for its models on object stores too (unless
    it names its own)."""
    if not options or config.model_storage_options:
        return config
    return config.model_copy(update={"model_storage_options": dict(options)})


def is_model_uri(spec: str) -> bool:
    """Whether `spec` names a model folder on an object store."""
    return is_uri(spec)


def models_cache() -> Path:
    """Where fetched models are kept: `$BERTETL_CACHE/models`, else the user's cache folder
    (`$XDG_CACHE_HOME` or `~/.cache`) under `bertetl/models`."""
    if os.environ.get("BERTETL_CACHE"):
        return Path(os.environ["BERTETL_CACHE"]) / "models"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bertetl" / "models"


def _listing(folder: Location, allow_pickle: bool) -> list[tuple[str, int, int]]:
    """The loading files under `folder`: (relative path, size, mtime in ns), sorted."""
    import pyarrow.fs as pafs

    patterns = (*ALLOW_PATTERNS, *(PICKLE_PATTERNS if allow_pickle else ()))
    try:
        infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    except (OSError, ValueError) as e:
        raise storage_error(folder, "cannot list the model folder", e) from e
    files = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(folder.path) :].lstrip("/")
        if any(fnmatch(relative, pattern) for pattern in patterns):
            files.append((relative, int(info.size or 0), int(info.mtime_ns or 0)))
    if not files:
        raise ModelError(f"model folder {folder} does not exist or holds no model files")
    return sorted(files)


def fetch_model(
    uri: str, storage_options: Mapping[str, str] | None = None, allow_pickle: bool = False
) -> Path:
    """The local copy of the model folder at `uri`, downloaded when this machine has none
    of its current files (see the module's docstring)."""
    folder = parse_location(uri, storage_options)
    files = _listing(folder, allow_pickle)
    key = hashlib.sha256(json.dumps([uri, files]).encode()).hexdigest()[:32]
    cache = models_cache()
    pointer = cache / "listings" / key
    with _lock:
        if pointer.is_file():
            cached = cache / pointer.read_text().strip()
            if cached.is_dir():
                return cached
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
        try:
            _download(folder, [relative for relative, _, _ in files], staging)
            fingerprint = model_fingerprint(staging)
            final = cache / fingerprint
            if final.is_dir():
                shutil.rmtree(staging)
            else:
                os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        temp = pointer.with_name(f".{key}.{os.getpid()}.tmp")
        temp.write_text(fingerprint)
        os.replace(temp, pointer)
        return final


def _download(folder: Location, files: list[str], staging: Path) -> None:
    """Copy `files` (relative to `folder`) into `staging`, a megabyte at a time."""
    for relative in files:
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        source = folder / relative
        try:
            with source.fs.open_input_stream(source.path) as stream, open(target, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
        except OSError as e:
            raise storage_error(source, "cannot read", e) from e
