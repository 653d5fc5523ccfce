"""sentence-transformers' own ONNX int8 as a bench system, run in the peer venv (`make peers`).

sentence-transformers exports and quantizes through optimum-onnx, which needs transformers
< 4.58; bertetl runs transformers 5, so the peer lives in its own venv and runs
`st_onnx_peer.py` there: once to export and quantize (not timed), once to time the encodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from bertetl.errors import ConfigError, ModelError

SYSTEM = "sentence-transformers-onnx-int8"
#: The peer venv's interpreter (`make peers` makes it), relative to the working directory.
PEER_PYTHON = ".venv-peers/bin/python"
PEER_SCRIPT = Path(__file__).with_name("st_onnx_peer.py")


def check_peer(python: str) -> None:
    """A one-line error before any system runs when the peer venv is missing."""
    if not Path(python).is_file():
        raise ConfigError(
            f"{SYSTEM} runs in its own venv, and {python} is missing (a relative path is "
            f"from {os.getcwd()}): run `make peers` in the repository, or give --peer-python "
            "(sentence-transformers 5 with optimum-onnx, which needs transformers < 4.58)"
        )


def _peer(python: str, *args: str) -> dict[str, Any]:
    """Run the peer script; its last stdout line is its JSON report."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # local folders only
    done = subprocess.run(
        [python, str(PEER_SCRIPT), *args], capture_output=True, text=True, env=env, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"{SYSTEM} {args[0]} failed (exit {done.returncode}): {last}")
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise ModelError(f"{SYSTEM} {args[0]}: its last line is not JSON: {lines[-1]!r}") from e
    return report


def export_folder(model_dir: Path, workdir: Path) -> Path:
    """Where the peer's export of `model_dir` lives under `workdir`: keyed by the model's
    files (names and contents), so a changed model is exported again."""
    from bertetl.io.manifest import model_fingerprint

    key = hashlib.sha256(model_fingerprint(model_dir).encode()).hexdigest()[:16]
    return workdir / f"st-onnx-int8-{key}"


def peer_run(
    texts: list[str], model_dir: Path, workdir: Path, repeats: int, python: str
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Export and quantize `model_dir` with sentence-transformers' preset for this CPU (once
    per workdir and model), then time its encode of `texts` (batch 32, after a 64-text
    warm-up). Returns the peer's report (seconds, peak RSS, preset, max length, versions), its
    int8 embeddings and, untimed, its fp32 ONNX model's."""
    check_peer(python)
    folder = export_folder(model_dir, workdir)
    _peer(python, "export", str(model_dir), str(folder))
    texts_file = workdir / "st-onnx-texts.json"
    int8, fp32 = workdir / "st-onnx-int8.npy", workdir / "st-onnx-fp32.npy"
    texts_file.write_text(json.dumps(texts))
    report = _peer(python, "run", str(folder), str(texts_file), str(int8), str(fp32), str(repeats))
    return report, np.load(int8), np.load(fp32)
