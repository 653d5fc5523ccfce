from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertetl.bench.corpus import ROTTEN_TOMATOES_ENV, rotten_tomatoes_path
from bertetl.bench.gpu_bundle import ABSENT_ON_GPU_IMAGE, copy_minilm
from bertetl.bench.gpu_check import (
    GPU_SYSTEMS,
    GPU_TEST_FILES,
    TARGETS,
    _variant,
    absent_variants,
    check_targets,
    verdicts,
)
from bertetl.engine.model_files import MINILM_DIR_ENV

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_test_files_are_every_file_with_a_gpu_test() -> None:
    """The check collects only these files (the rest of the suite needs packages an offline
    GPU image lacks), so a new GPU test in another file must be added to the list."""
    marked = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if "pytest.mark.gpu" in p.read_text()
    }
    assert marked == set(GPU_TEST_FILES)


def test_variant_option_parses_engine_fields() -> None:
    assert _variant("unpadded:attention=varlen,max_batch_rows=64") == (
        "unpadded",
        {"attention": "varlen", "max_batch_rows": 64},
    )
    with pytest.raises(argparse.ArgumentTypeError):
        _variant("unpadded")


def test_variants_the_engine_lacks_are_recorded_as_absent() -> None:
    notes = absent_variants({})
    assert len(notes) == 3
    assert all(("absent" in n) or ("--variant" in n) for n in notes)
    assert len(absent_variants({"unpadded": {"x": 1}})) == 2


def test_verdicts_compare_the_host_path_with_the_model_stage() -> None:
    rows = [
        {"model": "m", "system": "engine-model", "tokens_per_s": 1000.0},
        {"model": "m", "system": "engine-e2e", "tokens_per_s": 500.0, "share_of_model_only": 0.5,
         "x_pipeline": 5.0, "x_sentence-transformers": 1.5},
        {"model": "m", "system": "host", "cores": 1, "tokens_per_s": 300.0},
        {"model": "m", "system": "host", "cores": 16, "tokens_per_s": 600.0, "tokenizers": 0},
        {"model": "m", "system": "host", "cores": 16, "tokens_per_s": 900.0, "tokenizers": 8},
        {"model": "b", "system": "engine-model", "tokens_per_s": 100.0, "mfu": 0.55},
        {"model": "b", "system": "host", "cores": 16, "tokens_per_s": 600.0},
    ]  # fmt: skip
    roles = {"m": "minilm", "b": "bert-base"}
    found = verdicts(rows, roles)
    assert found["minilm"]["bound"] == "host" and found["minilm"]["host_cores"] == 16
    # the faster of the host runs on all cores: with the tokenizer pool
    assert found["minilm"]["host_tokens_per_s"] == 900.0
    assert found["minilm"]["host_tokenizers"] == 8
    assert found["bert-base"]["bound"] == "device"
    met = {t["target"]: t["met"] for t in check_targets(rows, roles, dry_run=False)}
    assert list(met.values()) == [True, False, False, True]
    assert len(met) == len(TARGETS)
    assert {t["met"] for t in check_targets(rows, roles, dry_run=True)} == {None}


#: Installed as sitecustomize.py, it makes each module named in ABSENT unimportable in the
#: process and every process it starts (bench systems, pytest), as on the GPU image.
BLOCKER = """
import importlib.abc, sys
ABSENT = {absent!r}
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU image)")
sys.meta_path.insert(0, Absent())
"""


def _as_on_the_gpu_image(tmp_path: Path) -> dict[str, str]:
    """The environment of `make gpu-check` from the offline bundle: the packages the GPU image
    lacks unimportable, MiniLM and the reviews from the bundle's folder and file."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(absent=ABSENT_ON_GPU_IMAGE))
    return {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{ROOT}",
        MINILM_DIR_ENV: str(copy_minilm(tmp_path / "minilm")),
        ROTTEN_TOMATOES_ENV: str(rotten_tomatoes_path()),
    }


@pytest.mark.slow
def test_dry_run_exercises_every_step_on_the_cpu(tmp_path: Path) -> None:
    """Every step of the check on the CPU, run as on the offline GPU image: without the
    packages it lacks (`gpu_bundle.ABSENT_ON_GPU_IMAGE`), in this process's children too, and
    pytest collecting the GPU test files."""
    env = _as_on_the_gpu_image(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import polars"], env=env, capture_output=True)
    assert b"absent on the GPU image" in probe.stderr  # the blocker is in place
    out = tmp_path / "gpu-check.json"
    command = [sys.executable, "-m", "bertetl.bench.gpu_check", "--dry-run", "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    assert report["tests"]["returncode"] == 0
    if not torch.cuda.is_available():
        assert "skipped" in report["tests"]["summary"]
    assert report["bench"]["errors"] == []
    results = [r for r in report["bench"]["results"] if "variant" not in r]
    seen = {(report["roles"][r["model"]], r["system"]) for r in results}
    assert seen == {(role, s) for role in ("minilm", "bert-base") for s in GPU_SYSTEMS}
    assert {v["bound"] for v in report["verdicts"].values()} <= {"host", "device"}
    hosts = [r for r in results if r["system"] == "host"]
    assert sorted(r["tokenizers"] for r in hosts) == [0, 0, 1, 1]  # without and with a pool
    assert [t["met"] for t in report["targets"]] == [None] * len(TARGETS)
    # the unpadded variant ran both engine systems for both models; the others are left out
    variants = {(v["variant"], v["model"], v["system"]) for v in report["variants"]}
    assert variants == {
        ("unpadded", role, system)
        for role in ("minilm", "bert-base")
        for system in ("engine-model", "engine-e2e")
    }
    assert all(v["x_default"] > 0 and v["wins"] is None for v in report["variants"])
    assert [n.split(":")[0] for n in report["absent"]] == ["compiled", "cuda_graphs"]
    # issue 16's long documents ran, window mode and hand-cut chunks on the same windows
    long_text = report["long_text"]
    assert long_text["met"] is None and long_text["value"] > 0
    systems = long_text["report"]["systems"]
    assert systems["bertetl window"]["windows"] == systems["hand-written chunks + ST"]["windows"]
    assert report["tests"]["command"].endswith(" ".join(GPU_TEST_FILES))
    printed = done.stdout
    assert "gpu-check on cpu (dry run" in printed and "target:" in printed
    assert "target: long documents: window mode >= 1.5x" in printed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_on_cuda_reports_gpu_memory_and_mfu(tiny_embed_dir: Path, tmp_path: Path) -> None:
    from bertetl.bench.systems import BenchConfig, peak_flops, run_bench

    config = BenchConfig(
        models=[str(tiny_embed_dir)],
        inputs=["reviews"],
        systems=["engine-model", "engine-e2e", "host"],
        rows=64,
        repeats=1,
        device="cuda",
        workdir=str(tmp_path),
        isolate=False,
        cores=[1],
    )
    report = run_bench(config)
    assert report["errors"] == []
    by_system = {r["system"]: r for r in report["results"]}
    assert by_system["engine-model"]["peak_gpu_mb"] > 0
    if peak_flops(torch.cuda.get_device_name(0)):
        assert 0 < by_system["engine-model"]["mfu"] < 1
    assert by_system["host"]["rows"] == 64 and by_system["host"]["tokens_per_s"] > 0
