"""Issue 14, rule 3: the files are the truth, a manifest is a claim to verify.

Broken the way a user breaks it: a real backfill, then committed output files deleted,
truncated, overwritten with other valid Parquet of the same size, or only touched; then the
nightly `incremental` and `bertetl summary`, checked by reading the files afterwards.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bertetl.cli import app
from bertetl.config import EngineConfig
from bertetl.flows.params import BackfillParams, IncrementalParams, RunOptions
from bertetl.flows.partitioned import backfill_flow, incremental_flow
from bertetl.io.manifest import MANIFEST_NAME, read_manifest
from bertetl.runs.enrich import enrich
from tests.outputs import assert_same_output, data_files, edit_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAST = RunOptions(retries=0, retry_delay_seconds=0)


@pytest.fixture
def config(tiny_embed_dir: Path) -> EngineConfig:
    return EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))


def params(kind: type, src: Path, dest: Path, config: EngineConfig):
    return kind(source=str(src), dest=str(dest), partition_column="date", engine=config, run=FAST)


def same_size_rewrite(path: Path) -> None:
    """Overwrite an output with other valid Parquet of exactly its size: same rows and schema,
    every embedding negated (a reuse of it would copy wrong vectors)."""
    size = path.stat().st_size
    table = pq.read_table(path)
    index = table.schema.get_field_index("embedding")
    column = table.column(index).combine_chunks()
    negated = pa.FixedSizeListArray.from_arrays(
        pc.negate(column.values), column.type.list_size, mask=column.is_null()
    )
    table = table.set_column(index, table.field(index), negated)
    for level in range(1, 20):  # zstd level and a metadata pad: find an exact size
        for pad in range(size):
            buffer = io.BytesIO()
            padded = table.replace_schema_metadata({b"pad": b"x" * pad})
            pq.write_table(
                padded,
                buffer,
                compression="zstd",
                compression_level=level,
                write_statistics=False,
                use_dictionary=False,
            )
            if len(buffer.getvalue()) == size:
                path.write_bytes(buffer.getvalue())
                return
            if len(buffer.getvalue()) > size:
                break
    raise AssertionError(f"no same-size rewrite of {path}")


def damage(dest: Path) -> dict[str, str]:
    """Break three committed partitions (2 files each) and touch a fourth's output; returns
    the problem each damaged file should be reported with."""
    (dest / "date=2026-01-01" / "part-1.parquet").unlink()
    truncated = dest / "date=2026-01-02" / "part-0.parquet"
    size = truncated.stat().st_size
    os.truncate(truncated, size // 2)
    same_size_rewrite(dest / "date=2026-01-03" / "part-0.parquet")
    os.utime(dest / "date=2026-01-04" / "part-0.parquet")  # touched, content unchanged
    return {
        "date=2026-01-01/part-1.parquet": "missing",
        "date=2026-01-02/part-0.parquet": f"truncated ({size // 2:,} of {size:,} bytes)",
        "date=2026-01-03/part-0.parquet": "changed (same size, different SHA-256)",
    }


def test_damaged_outputs_are_reported_then_redone_by_the_cli(
    config, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=4, rows=12, files_per_day=2), tmp_path / "dest"
    runner = CliRunner()
    args = [str(src), str(dest), "--partition-column", "date", "--text-column", "text"]
    args += ["--embed-model", config.embed_model, "--retries", "0"]
    result = runner.invoke(app, ["backfill", *args])
    assert result.exit_code == 0, result.output
    problems = damage(dest)
    touched = data_files(dest)["date=2026-01-04/part-0.parquet"]

    result = runner.invoke(app, ["summary", str(dest), "--partition-column", "date"])
    assert result.exit_code == 3, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    listed = result.stdout.split("damaged (not counted above):\n", 1)[1].splitlines()
    assert listed == [f"  {file}: {problem}" for file, problem in problems.items()]
    assert result.stderr.startswith("error: 3 damaged output file(s) in 3 folder(s)")
    assert "2026-01-04 ┆ 12" in result.stdout and "2026-01-02 ┆ 6" in result.stdout

    result = runner.invoke(app, ["incremental", *args])
    assert result.exit_code == 0, result.output
    assert "incremental: 3 partition(s) committed, 1 unchanged, 0 failed" in result.stdout
    for day in (1, 2, 3):  # each redone with the rows of its one intact file reused
        manifest = read_manifest(dest / f"date=2026-01-0{day}")
        assert (manifest.rows_inferred, manifest.rows_reused, manifest.rows_failed) == (5, 5, 2)
    assert data_files(dest)["date=2026-01-04/part-0.parquet"] == touched  # not rewritten

    result = runner.invoke(app, ["summary", str(dest), "--partition-column", "date"])
    assert result.exit_code == 0, result.output
    assert "damaged" not in result.output
    enrich(src, tmp_path / "reference", config)
    assert assert_same_output(dest, tmp_path / "reference") == 4 * 12


def test_incremental_says_why_each_partition_is_redone(
    config, partitioned_source, tmp_path: Path, caplog
) -> None:
    src, dest = partitioned_source(days=4, rows=12, files_per_day=2), tmp_path / "dest"
    backfill_flow(params(BackfillParams, src, dest, config))
    problems = damage(dest)
    edit_rows(src / "date=2026-01-02" / "part-1.parquet", [0])  # changed and damaged

    rows = incremental_flow(params(IncrementalParams, src, dest, config))
    reasons = {r["partition"]: (r["status"], r["reason"]) for r in rows}
    expected = {
        f"2026-01-0{day}": ("committed", f"damaged: {file.split('/')[1]} {problem}")
        for day, (file, problem) in enumerate(problems.items(), start=1)
    }
    assert reasons == {**expected, "2026-01-04": ("skipped", "unchanged")}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for file, problem in problems.items():
        folder, name = file.split("/")
        assert any(m.startswith(folder) and f"{name} {problem}" in m for m in warned), warned
    rows = incremental_flow(params(IncrementalParams, src, dest, config))
    assert {r["status"] for r in rows} == {"skipped"}
    enrich(src, tmp_path / "reference", config)
    assert_same_output(dest, tmp_path / "reference")


def as_version_1(dest: Path) -> None:
    """Rewrite every manifest as the code before output fingerprints wrote it."""
    for path in dest.glob(f"*/{MANIFEST_NAME}"):
        data = json.loads(path.read_text())
        del data["output_files"]
        path.write_text(json.dumps({**data, "version": 1}, indent=2))


def test_version_1_manifests_are_verified_by_their_footers_not_redone(
    config, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=3, rows=12), tmp_path / "dest"
    backfill_flow(params(BackfillParams, src, dest, config))
    as_version_1(dest)
    before = data_files(dest)
    rows = incremental_flow(params(IncrementalParams, src, dest, config))
    assert {(r["status"], r["reason"]) for r in rows} == {("skipped", "unchanged")}
    assert data_files(dest) == before  # old manifests alone re-enrich nothing

    fewer = dest / "date=2026-01-01" / "part-0.parquet"
    pq.write_table(pq.read_table(fewer).slice(0, 6), fewer)  # valid Parquet, rows lost
    truncated = dest / "date=2026-01-02" / "part-0.parquet"
    os.truncate(truncated, truncated.stat().st_size // 2)
    rows = incremental_flow(params(IncrementalParams, src, dest, config))
    reasons = {r["partition"]: (r["status"], r["reason"]) for r in rows}
    assert reasons["2026-01-01"] == (
        "committed",
        "damaged: outputs hold 6 rows, the manifest says 12",
    )
    status, reason = reasons["2026-01-02"]
    assert status == "committed" and reason.startswith("damaged: part-0.parquet unreadable (")
    assert reasons["2026-01-03"] == ("skipped", "unchanged")
    for day in (1, 2):
        manifest = read_manifest(dest / f"date=2026-01-0{day}")
        assert manifest.version == 2
        assert [(f.relative, f.rows) for f in manifest.output_files] == [("part-0.parquet", 12)]
    assert read_manifest(dest / "date=2026-01-03").version == 1
    enrich(src, tmp_path / "reference", config)
    assert_same_output(dest, tmp_path / "reference")


def test_damage_that_passes_the_stat_check_does_not_break_row_reuse(
    config, partitioned_source, tmp_path: Path, caplog
) -> None:
    """Bit rot with size and mtime kept is beyond the cheap check (documented): the skip
    trusts it, but when the partition's input changes, reading it for row reuse fails, and
    the partition is redone without reuse instead of failing."""
    src, dest = partitioned_source(days=1, rows=12), tmp_path / "dest"
    backfill_flow(params(BackfillParams, src, dest, config))
    output = dest / "date=2026-01-01" / "part-0.parquet"
    data, stat = bytearray(output.read_bytes()), output.stat()
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for at in range(4, len(data) - footer):  # every page scrambled, the footer intact
        data[at] ^= 0x5A
    output.write_bytes(bytes(data))
    os.utime(output, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    pq.read_metadata(output)  # still opens

    edit_rows(src / "date=2026-01-01" / "part-0.parquet", [0])
    (row,) = incremental_flow(params(IncrementalParams, src, dest, config))
    assert (row["status"], row["reason"], row["reused"]) == ("committed", "input changed", 0)
    assert any("earlier outputs not reused" in r.getMessage() for r in caplog.records)
    enrich(src, tmp_path / "reference", config)
    assert_same_output(dest, tmp_path / "reference")
