"""The offline GPU bundle (`make gpu-bundle`): the model it holds, and the environment
variables that point bertetl at it (tests/bench/test_gpu_check.py runs the whole dry run as
on the GPU image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from bertetl.bench import corpus
from bertetl.bench.gpu_bundle import copy_minilm
from bertetl.engine.model_files import MINILM_DIR_ENV, resolve_model_dir


def test_bundled_minilm_is_the_packaged_model_in_float16(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    packaged = resolve_model_dir("minilm")
    bundled = copy_minilm(tmp_path / "minilm")
    a = load_file(packaged / "model.safetensors")
    b = load_file(bundled / "model.safetensors")
    assert a.keys() == b.keys()
    for key, tensor in a.items():
        assert b[key].dtype == (tensor.half().dtype if tensor.is_floating_point() else tensor.dtype)
        np.testing.assert_allclose(b[key].float().numpy(), tensor.float().numpy(), atol=1e-3)
    assert (bundled / "tokenizer.json").read_bytes() == (packaged / "tokenizer.json").read_bytes()
    assert (bundled / "1_Pooling" / "config.json").is_file()


def test_minilm_and_reviews_come_from_the_environment_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = copy_minilm(tmp_path / "minilm")
    monkeypatch.setenv(MINILM_DIR_ENV, str(bundled))
    assert resolve_model_dir("minilm") == bundled
    reviews = tmp_path / "reviews.csv"
    pacsv.write_csv(pa.table({"category": ["fresh"], "text": ["fine"]}), reviews)
    monkeypatch.setenv(corpus.ROTTEN_TOMATOES_ENV, str(reviews))
    corpus.rotten_tomatoes.cache_clear()
    try:
        assert corpus.rotten_tomatoes().column("text").to_pylist() == ["fine"]
    finally:
        corpus.rotten_tomatoes.cache_clear()


def test_run_sh_installs_the_wheels_offline_and_runs_the_check_from_the_repository(
    tmp_path: Path,
) -> None:
    """The bundle's script with a recording `python3` first on PATH: the pip call it makes,
    then the check it execs, with its arguments, from the repository, pointed at the bundle."""
    import os
    import subprocess

    from bertetl.bench.gpu_bundle import RUN_SH

    repo = tmp_path / "repo"
    bundle = repo / ".gpu-bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "pydantic-2-py3-none-any.whl").write_text("")
    (bundle / "run.sh").write_text(RUN_SH.format(reviews="reviews.csv.bz2"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    fake = bin_dir / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$(pwd)|$PYTHONPATH|$BERTETL_MINILM_DIR|$BERTETL_ROTTEN_TOMATOES|$*" >> {log}\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TMPDIR": "/x"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["sh", str(bundle / "run.sh"), "--dry-run", "--out", "o.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    pip, check = (line.split("|") for line in log.read_text().splitlines())
    assert pip[4].split() == [
        "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
        "--target", "/x/bertetl-gpu-site", f"{bundle}/wheels/pydantic-2-py3-none-any.whl",
    ]  # fmt: skip
    cwd, pythonpath, minilm, reviews, args = check
    assert cwd == str(repo) and pythonpath == f"/x/bertetl-gpu-site:{repo}"
    assert minilm == f"{bundle}/minilm" and reviews == f"{bundle}/reviews.csv.bz2"
    assert args == "-m bertetl.bench.gpu_check --dry-run --out o.json"
