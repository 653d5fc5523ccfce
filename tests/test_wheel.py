"""A user's install: the wheel built from this checkout, installed (not editable) into a fresh
venv with no checkout on the path, runs backfill, incremental and summary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.outputs import assert_same_output

REPO = Path(__file__).resolve().parents[1]

#: One worker builds the wheel once: two builds in parallel race on the checkout's build/ folder.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools reuses the checkout's build/ folder, and a stale one (an
    # earlier build that was interrupted) breaks the next build.
    source = out / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".*", "build", "demo-data", "*.egg-info", "__pycache__", "tests", "dist"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        cwd=out,
    )
    [built] = out.glob("bertetl-*.whl")
    return built


def test_the_wheel_holds_the_flows_and_queries_inside_the_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"bertetl", f"{wheel.name.split('-py3')[0]}.dist-info"}  # no `flows`
    assert {"bertetl/sql/partitions_to_run.sql", "bertetl/flows/partitioned.py"} <= set(names)
    assert "bertetl/py.typed" in names


def _venv(root: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel installed; its dependencies come from this interpreter's
    site-packages (read-only, through a .pth), where no `bertetl` is importable."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        check=True,
    )
    return python


def test_installed_wheel_runs_backfill_incremental_and_summary(
    wheel: Path, tmp_path: Path, tiny_embed_dir: Path, partitioned_source, prefect_harness
) -> None:
    from prefect.settings import PREFECT_API_URL

    python = _venv(tmp_path / "venv", wheel)
    work = tmp_path / "elsewhere"  # not the checkout: nothing of it on the path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTHON"))}
    # the session's Prefect API: the CLI's own temporary server is tested in tests/flows
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def run(*args: str) -> str:
        done = subprocess.run(
            [python, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    where = run(
        "-c", "import bertetl, importlib.util as u; print(bertetl.__file__, u.find_spec('flows'))"
    )
    assert str(tmp_path / "venv") in where and str(REPO) not in where
    assert where.split()[-1] == "None"  # no top-level `flows` module
    src, dest = partitioned_source(days=3, rows=12), tmp_path / "dest"
    cli = ["-m", "bertetl"]
    common = ["--partition-column", "date", "--text-column", "text"]
    common += ["--embed-model", str(tiny_embed_dir), "--device", "cpu"]
    out = run(*cli, "backfill", str(src), str(dest), *common, "--start", "2026-01-01")
    assert "3 partition(s) committed" in out
    table = pq.read_table(src / "date=2026-01-02" / "part-0.parquet")
    pq.write_table(
        table.set_column(1, "text", pa.array(["edited"] * table.num_rows)),
        src / "date=2026-01-02" / "part-0.parquet",
    )
    out = run(*cli, "incremental", str(src), str(dest), *common)
    assert "1 partition(s) committed, 2 unchanged" in out
    out = run(*cli, "summary", str(dest), "--partition-column", "date")
    assert "2026-01-03" in out and "rows" in out
    from bertetl.config import EngineConfig
    from bertetl.runs.enrich import enrich

    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), device="cpu")
    enrich(src, tmp_path / "reference", config)
    assert assert_same_output(dest, tmp_path / "reference") == 3 * 12
