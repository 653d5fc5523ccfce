"""Hugging Face Hub names (`ORG/NAME[@REVISION]`) resolved to a commit's local snapshot.

Resolution goes through `huggingface_hub.snapshot_download` into the standard cache, reading
`HF_HUB_OFFLINE`, `HF_TOKEN`, `HF_HOME` / `HF_HUB_CACHE` and `HF_ENDPOINT` at each call (not
at import, so a test or a flow can set them). Only what loading needs is fetched: configs,
safetensors weights, tokenizer and sentence-transformers module files; pickle weights only with
`allow_pickle`; remote code never. A name is resolved to a commit once per process (and a
run's workers get the `ORG/NAME@COMMIT` spelling), so every partition uses one commit.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from bertetl.errors import ModelError

#: `ORG/NAME` or `ORG/NAME@REVISION` (a branch, tag or commit).
HUB_NAME = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: What loading needs (fnmatch: `*` crosses folders, so `1_Pooling/config.json` matches).
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken")
PICKLE_PATTERNS = ("pytorch_model*.bin", "*/pytorch_model*.bin")


@dataclass(frozen=True)
class HubModel:
    """A model named on the Hub: its repository and the revision asked for (None: main)."""

    repo: str
    revision: str | None = None

    def pinned(self, commit: str) -> str:
        """The spelling that names this model at `commit`."""
        return f"{self.repo}@{commit}"


def parse_hub_name(spec: str) -> HubModel | None:
    """The Hub model `spec` names, or None when it is a local path (one that exists, or
    that starts like a path) or not shaped `ORG/NAME[@REVISION]`."""
    if "://" in spec or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        return None
    match = HUB_NAME.match(spec)
    if match is None:
        return None
    return HubModel(match["repo"], match["rev"])


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache() -> Path:
    """The Hub cache in use: `HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """Whether the Hub may not be contacted (`HF_HUB_OFFLINE`, or `TRANSFORMERS_OFFLINE`)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


_resolved: dict[tuple[str, ...], Path] = {}
_lock = threading.Lock()


def hub_snapshot(model: HubModel, allow_pickle: bool = False) -> Path:
    """The local snapshot folder (`.../snapshots/COMMIT`) of `model`, downloaded when it is
    not cached; the same folder for the same name all through one process. Errors are one
    line naming the model."""
    key = (model.repo, model.revision or "", str(allow_pickle), str(hub_cache()), str(offline()))
    with _lock:
        if key not in _resolved:
            _resolved[key] = _download(model, allow_pickle)
        return _resolved[key]


def _download(model: HubModel, allow_pickle: bool) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; bertetl reads it at each call
    constants.HF_HUB_OFFLINE = offline()
    patterns = [*ALLOW_PATTERNS, *(PICKLE_PATTERNS if allow_pickle else ())]
    revision = model.revision or "main"
    name = f"{model.repo}@{revision}" if model.revision else model.repo

    def fetch(local_only: bool) -> Path:
        return Path(
            snapshot_download(
                model.repo,
                revision=revision,
                cache_dir=hub_cache(),
                allow_patterns=patterns,
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                token=os.environ.get("HF_TOKEN") or None,
                local_files_only=local_only,
            )
        )

    try:
        if COMMIT.match(revision):  # a pinned commit already cached needs no request
            try:
                return fetch(local_only=True)
            except (LocalEntryNotFoundError, FileNotFoundError):
                if offline():
                    raise
        return fetch(local_only=offline())
    except GatedRepoError as e:
        raise ModelError(
            f"Hub model {name} is gated: accept its terms on the Hub and set HF_TOKEN"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelError(f"Hub model {model.repo} has no revision {revision!r}") from e
    except RepositoryNotFoundError as e:
        raise ModelError(
            f"Hub model {name} does not exist (or is private: set HF_TOKEN); give a Hub name "
            "ORG/NAME[@REVISION] or a local model folder"
        ) from e
    except (LocalEntryNotFoundError, FileNotFoundError) as e:
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
        raise ModelError(
            f"model {name} does not exist as a local folder, and {why} and it is not "
            f"complete in the Hugging Face cache {hub_cache()}: fetch it once online "
            "(docs/MODELS.md)"
        ) from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot fetch Hub model {name}: {first}") from e


def snapshot_commit(snapshot: Path) -> str:
    """The commit a snapshot folder holds (its name in the cache layout)."""
    return Path(snapshot).name
