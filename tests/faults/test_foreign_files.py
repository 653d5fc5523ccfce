"""Rule 2: a run deletes nothing it did not write.

A partition folder under DEST may hold only what bertetl owns there: its `_manifest.json`,
the outputs that manifest lists, bertetl output at the paths the run writes (e.g. from an
earlier `bertetl enrich`), and bertetl temp files. A backfill or incremental run whose
partition folders hold anything else is refused before any server or model, naming the
files; a file that appears during the run is carried into the new partition, never deleted.
Cleaning up after a killed run stays inside what this run's lock covers.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import bertetl.io.commit as commit
from bertetl.cli import app
from bertetl.config import EngineConfig
from bertetl.executors.local import LocalExecutor
from bertetl.io.commit import TEMP_SUFFIX, DestinationLock, staging_root
from bertetl.io.manifest import read_manifest
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import enrich_partition
from tests.outputs import snapshot


def run(command: str, src: Path, dest: Path, model: Path, *extra: str):
    args = [command, str(src), str(dest), "--text-column", "text", "--embed-model", str(model)]
    if command != "enrich":
        args += ["--partition-column", "date"]
    return CliRunner().invoke(app, [*args, *extra])


def error_line(result) -> str:
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    return line


def temp_name(output: str) -> str:
    return f".{output}.{uuid.uuid4().hex}{TEMP_SUFFIX}"


def test_foreign_files_in_a_dest_partition_refuse_the_run_before_any_work(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path, nothing_heavy
) -> None:
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    folder = dest / "date=2026-01-01"
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("a colleague's notes")
    pq.write_table(pa.table({"text": ["another table's row"]}), folder / "other-0.parquet")
    pq.write_table(pa.table({"text": ["not enriched"]}), folder / "part-0.parquet")
    (folder / "keep").mkdir()
    before = snapshot(tmp_path)
    for command in ("backfill", "incremental"):
        result = run(command, src, dest, tiny_embed_dir)
        assert result.exit_code == 1, result.output
        line = error_line(result)
        for name in ("precious.txt", "other-0.parquet", "part-0.parquet", "keep/"):
            assert f"{folder}/{name}" in line  # a file at an output path that is not ours, too
        assert "4 file(s) bertetl did not write" in line and "move them out of DEST" in line
    assert nothing_heavy == []
    assert snapshot(tmp_path) == before


@pytest.mark.usefixtures("prefect_harness")
def test_a_file_dropped_into_a_committed_partition_stops_the_next_run(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    assert run("backfill", src, dest, tiny_embed_dir).exit_code == 0
    folder = dest / "date=2026-01-01"
    (folder / "notes.txt").write_text("keep me")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.parquet.crc").write_bytes(b"crc")
    before = snapshot(dest)
    for extra in (["--force"], []):
        result = run("backfill", src, dest, tiny_embed_dir, *extra)
        assert result.exit_code == 1, result.output
        line = error_line(result)
        assert all(name in line for name in ("notes.txt", "_SUCCESS", ".part-0.parquet.crc"))
        assert snapshot(dest) == before  # the committed partition is untouched too
    for name in ("notes.txt", "_SUCCESS", ".part-0.parquet.crc"):
        (folder / name).rename(tmp_path / name)
    result = run("backfill", src, dest, tiny_embed_dir, "--force")
    assert result.exit_code == 0, result.output
    assert "2 partition(s) committed" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_enrich_output_is_ours_and_partitions_outside_the_range_are_not_checked(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=3), tmp_path / "dest"
    assert run("enrich", src, dest, tiny_embed_dir).exit_code == 0
    (dest / "date=2026-01-01" / "precious.txt").write_text("keep me")
    result = run("backfill", src, dest, tiny_embed_dir, "--start", "2026-01-02")
    assert result.exit_code == 0, result.output
    assert "2 partition(s) committed" in result.output
    for day in ("02", "03"):
        manifest = read_manifest(dest / f"date=2026-01-{day}")
        assert manifest is not None and manifest.outputs == ["part-0.parquet"]
        assert pq.read_table(dest / f"date=2026-01-{day}").num_rows == manifest.rows_out == 24
    assert (dest / "date=2026-01-01" / "precious.txt").read_text() == "keep me"
    assert read_manifest(dest / "date=2026-01-01") is None


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_file_that_appears_during_the_run_is_carried_into_the_new_partition(
    exchange: bool,
    tiny_embed_dir: Path,
    partitioned_source,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the run's check, a file lands in the live partition folder; the swap that
    replaces that folder moves it into the new one instead of deleting it."""
    if not exchange:
        monkeypatch.setattr(commit, "_exchange", lambda a, b: False)
    src, dest = partitioned_source(days=1), tmp_path / "dest"
    executor = LocalExecutor(EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)))
    executor.setup()
    try:
        plan = plan_partitions(src, dest, "date", executor.config)
        first = enrich_partition(executor, plan.partitions[0], dest, plan)
        folder = dest / "date=2026-01-01"
        real_run_jobs = executor.run_jobs

        def run_jobs_while_a_file_lands(*args, **kwargs):
            (folder / "sub").mkdir()
            (folder / "sub" / "late.txt").write_text("written mid-run")
            return real_run_jobs(*args, **kwargs)

        monkeypatch.setattr(executor, "run_jobs", run_jobs_while_a_file_lands)
        plan = plan_partitions(src, dest, "date", executor.config, force=True)
        second = enrich_partition(executor, plan.partitions[0], dest, plan, reuse=False)
    finally:
        executor.teardown()
    assert second.started != first.started and read_manifest(folder) == second
    assert (folder / "sub" / "late.txt").read_text() == "written mid-run"
    assert pq.read_table(folder / "part-0.parquet").num_rows == second.rows_out == 24
    assert not staging_root(dest).exists() or not any(staging_root(dest).iterdir())


@pytest.mark.parametrize(
    "command",
    ["enrich", pytest.param("backfill", marks=pytest.mark.slow)],  # Prefect's local server
)
def test_cleanup_stays_inside_what_this_runs_lock_covers(
    command: str,
    tiny_embed_dir: Path,
    partitioned_source,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A run on out/nest while a run on out/nest/a is writing is refused (a DEST holding
    another run's DEST), touching nothing of the other run; once that run is gone, a run on
    out/nest cleans its own leftovers, never anything behind a link."""
    src, dest = partitioned_source(days=1), tmp_path / "out" / "nest"
    inner = dest / "a"
    own_leftover = dest / "date=2026-01-01" / temp_name("part-0.parquet")
    inner_temp = inner / "date=2026-01-01" / temp_name("part-0.parquet")
    inner_staged = staging_root(inner) / uuid.uuid4().hex / temp_name("part-0.parquet")
    elsewhere = tmp_path / "elsewhere" / temp_name("x.parquet")
    for path in (own_leftover, inner_temp, inner_staged, elsewhere):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"in progress")
    (dest / "ext").symlink_to(elsewhere.parent)
    if command == "backfill":
        request.getfixturevalue("prefect_harness")
    assert staging_root(inner).parent == dest  # the other run's staging lies inside DEST
    with DestinationLock(inner):  # the run on out/nest/a is still going
        result = run(command, src, dest, tiny_embed_dir)
    assert result.exit_code == 1 and "holds another run's DEST" in result.output, result.output
    for path in (own_leftover, inner_temp, inner_staged, elsewhere):
        assert path.read_bytes() == b"in progress", path
    shutil.rmtree(inner)  # that run is over and its DEST moved away
    shutil.rmtree(staging_root(inner))
    result = run(command, src, dest, tiny_embed_dir)
    assert result.exit_code == 0, result.output
    assert not own_leftover.exists()
    assert elsewhere.read_bytes() == b"in progress"
    assert pq.read_table(dest / "date=2026-01-01" / "part-0.parquet").num_rows == 24
