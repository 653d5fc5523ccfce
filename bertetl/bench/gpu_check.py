"""`make gpu-check`: on one GPU, the GPU tests, then the engine against its peers, in one call.

`python -m bertetl.bench.gpu_check [--dry-run] [--out gpu-check.json]` runs, timing each step
and recording it in the JSON file whatever happens:

1. environment: nvidia-smi's view, torch and its CUDA, the device. Without CUDA (and without
   `--dry-run`) it stops there with exit code 2.
2. tests: `pytest -m gpu` over the test files that hold GPU tests, in a subprocess.
3. bench: `bertetl bench` (`run_bench`) for MiniLM (the packaged all-MiniLM-L6-v2) and a
   BERT-base-sized model (random weights) on the real reviews: the transformers pipeline,
   sentence-transformers, the engine's model stage alone and end to end, each in its own
   process, in the device's default precision (bf16 on an H100), and the host path (null
   model, `bertetl.bench.host`) on 1 core and on all. Engine variants (`--variant`; by
   default the unpadded, the compiled and the CUDA-graph paths, all off by default in the
   engine) run the engine's two systems again.
4. long documents (issue 16): `--long-text window` against hand-cut chunks through
   sentence-transformers (`bertetl.bench.long_text`), MiniLM, alternating rounds.
5. verdicts: per model, whether the end-to-end engine is host-bound (the host path feeds fewer
   tokens/s than the model stage takes) or device-bound; the issue's GPU targets, met or not;
   each variant's speed over the default path's, and whether it wins (then it is the one to
   turn on by default); variants not run, recorded as absent.

It prints one table and writes every figure to the JSON file. It is sized to finish in under 8
minutes on one H100 (10,000 rows, 3 repeats); past `--budget-s` the systems not yet started are
skipped, and the report says which.

`--dry-run` runs every step on the CPU, with a 1-layer model (MiniLM's tokenizer) in each
model's place, a few rows, one repeat, all systems in this process: everything but CUDA.
`tests/bench/test_gpu_check.py` runs it, so the script cannot rot before a GPU comes.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertetl.bench.memory import tiny_model
from bertetl.bench.systems import BenchConfig, environment, run_bench
from bertetl.executors.local import MAX_DEFAULT_TOKENIZERS

#: The test files that hold `gpu`-marked tests (tests/bench/test_gpu_check.py checks the list):
#: only these are collected, so the other tests' packages (Prefect, moto, Delta, Iceberg),
#: absent from an offline GPU image, are never imported.
GPU_TEST_FILES = (
    "tests/test_gpu_engine.py",
    "tests/engine/test_gpu.py",
    "tests/engine/test_graphs.py",
    "tests/bench/test_gpu_check.py",
)
#: The systems the check runs for each model.
GPU_SYSTEMS = ["pipeline", "sentence-transformers", "engine-model", "engine-e2e", "host"]
#: Engine variants the issue asks to compare, and words an EngineConfig field for one would
#: carry; with no such field the variant is recorded as absent.
VARIANTS = {
    "unpadded": ("unpad", "varlen", "nested", "packed"),
    "compiled": ("compile",),
    "cuda_graphs": ("cuda_graph",),
}
#: The variants a check runs when none is named: each engine path that is off by default
#: until a GPU measurement says it wins. A dry run leaves `compiled` out (compiling on the
#: CPU costs half a minute; tests/engine/test_unpadded.py covers that path there), and
#: `cuda_graphs` (CUDA only; tests/engine/test_graphs.py covers its batch shapes on the CPU).
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "unpadded": {"unpadded": True},
    "cuda_graphs": {"cuda_graphs": True},
    "compiled": {"compile": True},  # last: compiling takes longest, so it is what a slow
}  # run skips first (past --budget-s)
DRY_RUN_VARIANTS = ("unpadded",)
#: Issue 16's long documents on the GPU: `--long-text window` against hand-cut chunks through
#: sentence-transformers (`bench.long_text`), with MiniLM, in alternating rounds.
LONG_DOCUMENTS = 128
LONG_TEXT_TARGET = ("long documents: window mode >= 1.5x hand-written chunks + ST", 1.5)
#: The GPU targets of issue 19: (name, model role, system, result key, at least).
TARGETS = [
    ("BERT-base model-only MFU >= 50%", "bert-base", "engine-model", "mfu", 0.5),
    ("MiniLM end to end >= 85% of model-only", "minilm", "engine-e2e", "share_of_model_only", 0.85),
    ("MiniLM end to end >= 2x sentence-transformers", "minilm", "engine-e2e",
     "x_sentence-transformers", 2.0),
    ("MiniLM end to end >= 4x the pipeline", "minilm", "engine-e2e", "x_pipeline", 4.0),
]  # fmt: skip


@dataclass
class CheckPlan:
    """What one gpu-check runs; `dry_run` shrinks it to a CPU run of every step."""

    dry_run: bool = False
    rows: int = 10_000
    repeats: int = 3
    budget_s: float = 420.0
    tests: list[str] = field(default_factory=lambda: list(GPU_TEST_FILES))
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def bench_config(self, models: list[str], workdir: Path) -> BenchConfig:
        """The bench's config: the GPU's own precision, each system in its own process, the
        host path at 1 core and all, without and with a tokenizer pool; or, dry, the CPU, in
        this process."""
        return BenchConfig(
            models=models,
            inputs=["reviews"],
            systems=GPU_SYSTEMS,
            rows=self.rows,
            repeats=self.repeats,
            device="cpu" if self.dry_run else "cuda",
            workdir=str(workdir),
            isolate=not self.dry_run,
            cores=[1] if self.dry_run else None,
            # the host path without and with a tokenizer pool (`--tokenizers`; the engine's
            # default on CUDA: the cores left, at most MAX_DEFAULT_TOKENIZERS)
            tokenizers=[0, 1] if self.dry_run else [0, MAX_DEFAULT_TOKENIZERS],
        )


def gpu_environment() -> dict[str, Any]:
    """The bench's environment plus nvidia-smi's view and torch's CUDA."""
    import torch

    info = environment()
    info["cuda_available"] = torch.cuda.is_available()
    info["torch_cuda"] = torch.version.cuda
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,memory.total,driver_version"
        done = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, check=False
        )
        info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    else:
        info["nvidia_smi"] = None
    return info


def run_tests(paths: list[str]) -> dict[str, Any]:
    """`pytest -m gpu` over `paths` in a subprocess: its exit code and closing line."""
    existing = [p for p in paths if Path(p).exists()]
    if not existing:
        return {"returncode": None, "summary": f"no tests at {paths}", "seconds": 0.0}
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run([*command, *existing], capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {
        "command": " ".join(["pytest", *command[3:], *existing]),
        "returncode": done.returncode,
        "summary": lines[-1] if lines else done.stderr.strip()[-500:],
        "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))],
        "seconds": round(time.perf_counter() - started, 1),
    }


def absent_variants(asked: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's variants not measured in this run, and why."""
    from bertetl.config import EngineConfig

    notes = []
    for variant, words in VARIANTS.items():
        if variant in asked:
            continue
        fields = [f for f in EngineConfig.model_fields if any(w in f for w in words)]
        if fields:
            notes.append(
                f"{variant}: not measured; the engine has {', '.join(fields)}: "
                f"run with --variant {variant}:{fields[0]}=VALUE"
            )
        else:
            notes.append(f"{variant}: absent, the engine offers no {variant} path at this commit")
    return notes


def variant_rows(
    plan: CheckPlan, models: list[str], workdir: Path, until: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """The engine's two systems again for each asked-for variant, labelled with its name."""
    rows, errors = [], []
    for name, options in plan.variants.items():
        config = plan.bench_config(models, workdir).model_copy(
            update={"systems": ["engine-model", "engine-e2e"], "engine_options": options}
        )
        report = run_bench(config, until=until)
        for row in report["results"]:
            row["system"] = f"{row['system']} [{name}]"
            row["variant"] = name
        rows.extend(report["results"])
        errors.extend(f"[{name}] {error}" for error in report["errors"])
    return rows, errors


def verdicts(results: list[dict[str, Any]], roles: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per model: the model stage's tokens/s (what the device takes), the host path's on all
    cores, with the better tokenizer pool size (what the host feeds), the end-to-end share of
    model-only, and which bounds it."""
    out = {}
    for spec, role in roles.items():
        mine = [r for r in results if r["model"] == spec and "variant" not in r]
        device = next((r for r in mine if r["system"] == "engine-model"), None)
        e2e = next((r for r in mine if r["system"] == "engine-e2e"), None)
        hosts = [r for r in mine if r["system"] == "host"]
        # all cores, the faster of without and with a tokenizer pool
        host = max(hosts, key=lambda r: (r["cores"], r["tokens_per_s"])) if hosts else None
        verdict: dict[str, Any] = {
            "device_tokens_per_s": device and device["tokens_per_s"],
            "host_tokens_per_s": host and host["tokens_per_s"],
            "host_cores": host and host["cores"],
            "host_tokenizers": host and host.get("tokenizers", 0),
            "e2e_share_of_model_only": e2e and e2e.get("share_of_model_only"),
        }
        if device and host:
            slower = host["tokens_per_s"] < device["tokens_per_s"]
            verdict["bound"] = "host" if slower else "device"
        out[role] = verdict
    return out


def variant_verdicts(
    results: list[dict[str, Any]], roles: dict[str, str], dry_run: bool
) -> list[dict[str, Any]]:
    """Per variant, model and engine system: its tokens/s over the default path's in the same
    run, and whether it wins (> 1.05x, beyond run-to-run noise): a variant that wins on the
    GPU is the one to turn on by default (None on a dry run: not a measurement)."""
    default = {
        (r["model"], r["system"]): r["tokens_per_s"]
        for r in results
        if "variant" not in r and r.get("tokens_per_s")
    }
    out = []
    for row in results:
        if "variant" not in row or not row.get("tokens_per_s"):
            continue
        system = row["system"].removesuffix(f" [{row['variant']}]")
        base = default.get((row["model"], system))
        ratio = round(row["tokens_per_s"] / base, 3) if base else None
        out.append(
            {
                "variant": row["variant"],
                "model": roles.get(row["model"], row["model"]),
                "system": system,
                "x_default": ratio,
                "wins": None if dry_run or ratio is None else ratio > 1.05,
            }
        )
    return out


def check_targets(
    results: list[dict[str, Any]], roles: dict[str, str], dry_run: bool
) -> list[dict[str, Any]]:
    """Each GPU target with its measured value and whether it is met (None: not measured)."""
    spec_of = {role: spec for spec, role in roles.items()}
    out = []
    for name, role, system, key, least in TARGETS:
        row = next(
            (r for r in results if r["model"] == spec_of.get(role) and r["system"] == system),
            None,
        )
        value = row.get(key) if row else None
        out.append(
            {
                "target": name,
                "value": value,
                "met": None if value is None or dry_run else value >= least,
            }
        )
    return out


def summary_table(report: dict[str, Any]) -> str:
    """One table: every system of every model, then the verdicts, targets and absences."""
    from rich.console import Console
    from rich.table import Table

    roles = report["roles"]
    env = report["environment"]
    dry = " (dry run on CPU: not a measurement)" if report["dry_run"] else ""
    table = Table(title=f"gpu-check on {env['device']}{dry}")
    columns = [
        ("model", None),
        ("system", None),
        ("rows/s", "rows_per_s"),
        ("tokens/s", "tokens_per_s"),
        ("MFU", "mfu"),
        ("peak GPU MB", "peak_gpu_mb"),
        ("e2e/model", "share_of_model_only"),
        ("x pipeline", "x_pipeline"),
        ("x s-t", "x_sentence-transformers"),
        ("bound", None),
    ]
    for title, _ in columns:
        table.add_column(title, justify="left" if title in ("model", "system") else "right")
    for row in report["bench"]["results"]:
        role = roles.get(row["model"], row["model"])
        system = row["system"]
        if system == "host":
            system += f" x{row['cores']} cores, {row.get('tokenizers', 0)} tokenizers"
        cells = [role, system]
        for key in (k for _, k in columns[2:-1]):
            value = row.get(key)
            if isinstance(value, float):
                value = f"{value:.1%}" if key == "mfu" else f"{value:,.2f}"
            cells.append("" if value is None else str(value))
        verdict = report["verdicts"].get(role, {})
        cells.append((row["system"] == "engine-e2e" and verdict.get("bound")) or "")
        table.add_row(*cells)
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(table)
    tests = report["tests"]
    console.print(f"gpu tests: {tests.get('summary')} (exit {tests.get('returncode')})")
    met = {True: "met", False: "NOT met", None: "not measured"}
    for target in report["targets"]:
        console.print(f"target: {target['target']}: {target['value']} ({met[target['met']]})")
    long_text = report["long_text"]
    why = long_text.get("skipped") or long_text.get("error") or ""
    console.print(
        f"target: {long_text['target']}: {long_text.get('value')} ({met[long_text['met']]}) {why}"
    )
    for v in report["variants"]:
        wins = {True: "wins: turn it on by default", False: "does not win", None: "not measured"}
        console.print(
            f"variant {v['variant']}: {v['model']} {v['system']}: {v['x_default']}x the "
            f"default path ({wins[v['wins']]})"
        )
    for note in report["absent"]:
        console.print(f"variant {note}")
    for error in report["bench"]["errors"]:
        console.print(f"error: {error}")
    console.print(f"{report['elapsed_s']:.0f} s (budget {report['budget_s']:.0f} s)")
    return console.export_text()


def long_text_step(plan: CheckPlan, model: str, workdir: Path, until: float) -> dict[str, Any]:
    """Issue 16's window-mode benchmark on the device (or, dry, two documents on the CPU):
    its report, the target met or not, or why it did not run."""
    from bertetl.bench.long_text import run_long_text_bench

    name, least = LONG_TEXT_TARGET
    if time.monotonic() > until:
        return {"target": name, "met": None, "skipped": "past --budget-s"}
    try:
        report = run_long_text_bench(
            workdir / "long-documents",
            documents=2 if plan.dry_run else LONG_DOCUMENTS,
            model=model,
            device="cpu" if plan.dry_run else "cuda",
            repeats=1 if plan.dry_run else plan.repeats,
        )
    except Exception as e:  # recorded and reported; the check's other figures still count
        return {"target": name, "met": None, "error": f"{type(e).__name__}: {e}"}
    value = report["speedup_window_vs_hand_written"]
    return {
        "target": name,
        "value": value,
        "met": None if plan.dry_run else value >= least,
        "report": report,
    }


def run_check(plan: CheckPlan, out: Path) -> int:
    """Every step of the check; writes `out` and returns the exit code (0: tests passed and
    every system ran; 1: a failure; 2: no CUDA device and not a dry run)."""
    started = time.monotonic()
    env = gpu_environment()
    if not plan.dry_run and not env["cuda_available"]:
        print(
            "gpu-check: torch sees no CUDA device "
            f"(torch {env['torch']}, built for CUDA {env['torch_cuda']}; "
            f"nvidia-smi: {env['nvidia_smi']}); use --dry-run on a CPU machine",
            file=sys.stderr,
        )
        return 2
    tests = run_tests(plan.tests)
    until = started + plan.budget_s
    with tempfile.TemporaryDirectory(prefix="bertetl-gpu-check-") as scratch:
        workdir = Path(scratch)
        if plan.dry_run:  # a 1-layer model in each role: the code paths, not the figures
            roles = {str(tiny_model(workdir / role)): role for role in ("minilm", "bert-base")}
        else:
            roles = {"minilm": "minilm", "bert-base": "bert-base"}
        bench = run_bench(plan.bench_config(list(roles), workdir), until=until)
        minilm = next(spec for spec, role in roles.items() if role == "minilm")
        long_text = long_text_step(plan, minilm, workdir, until)
        rows, errors = variant_rows(plan, list(roles), workdir, until)
    bench["results"].extend(rows)
    bench["errors"].extend(errors)
    if "error" in long_text:
        bench["errors"].append(f"[long documents] {long_text['error']}")
    report = {
        "dry_run": plan.dry_run,
        "environment": env,
        "roles": roles,
        "tests": tests,
        "bench": bench,
        "verdicts": verdicts(bench["results"], roles),
        "targets": check_targets(bench["results"], roles, plan.dry_run),
        "variants": variant_verdicts(bench["results"], roles, plan.dry_run),
        "long_text": long_text,
        "absent": absent_variants(plan.variants),
        "budget_s": plan.budget_s,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    out.write_text(json.dumps(report, indent=2, default=str))
    print(summary_table(report))
    print(f"results written to {out}")
    passed = tests["returncode"] in (0, 5, None)  # 5: no GPU test collected
    return 0 if passed and not bench["errors"] else 1


def default_variants(dry_run: bool) -> dict[str, dict[str, Any]]:
    """`DEFAULT_VARIANTS`, or on a dry run those in `DRY_RUN_VARIANTS`."""
    names = DRY_RUN_VARIANTS if dry_run else tuple(DEFAULT_VARIANTS)
    return {name: DEFAULT_VARIANTS[name] for name in names}


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME:FIELD=VALUE[,FIELD=VALUE]` -> (NAME, {FIELD: VALUE}); values as JSON if they parse."""
    name, _, assignments = text.partition(":")
    options: dict[str, Any] = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, value = assignment.partition("=")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    if not name or not options:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: give NAME:FIELD=VALUE")
    return name, options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertetl.bench.gpu_check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="Every step on the CPU, tiny.")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--rows", type=int, help="Texts per system (default 10000; dry 16).")
    parser.add_argument("--repeats", type=int, help="Timed repetitions (default 3; dry 1).")
    parser.add_argument("--budget-s", type=float, default=420.0, help="Skip systems after it.")
    parser.add_argument(
        "--tests",
        default=",".join(GPU_TEST_FILES),
        help="Comma-separated test paths for pytest -m gpu (default: the files holding GPU "
        "tests, so the rest of the suite's needs, absent from a GPU image, are not imported).",
    )
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=[],
        help="NAME:FIELD=VALUE[,...]: the engine's systems again with these EngineConfig fields.",
    )
    args = parser.parse_args(argv)
    plan = CheckPlan(
        dry_run=args.dry_run,
        rows=args.rows or (16 if args.dry_run else 10_000),
        repeats=args.repeats or (1 if args.dry_run else 3),
        budget_s=args.budget_s,
        tests=[p for p in args.tests.split(",") if p],
        variants=dict(args.variant) or default_variants(args.dry_run),
    )
    return run_check(plan, args.out)


if __name__ == "__main__":
    sys.exit(main())
