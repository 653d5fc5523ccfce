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
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def peer_run(
    texts: list[str], model_dir: Path, workdir: Path, repeats: int, python: str = PEER_PYTHON
) -> tuple[dict[str, Any], np.ndarray]:
    """Export and quantize `model_dir` with sentence-transformers' preset for this CPU (once
    per workdir), then time its encode of `texts` (batch 32, after a 64-text warm-up).
    Returns the peer's report (seconds, peak RSS, preset, versions) and its embeddings."""
    if not Path(python).is_file():
        raise ConfigError(
            f"{SYSTEM} runs in its own venv, and {python} is missing: run `make peers` "
            "(sentence-transformers 5 with optimum-onnx, which needs transformers < 4.58)"
        )
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]
    folder = workdir / f"st-onnx-int8-{key}"
    _peer(python, "export", str(model_dir), str(folder))
    texts_file, embeddings_file = workdir / "st-onnx-texts.json", workdir / "st-onnx.npy"
    texts_file.write_text(json.dumps(texts))
    report = _peer(python, "run", str(folder), str(texts_file), str(embeddings_file), str(repeats))
    return report, np.load(embeddings_file)
