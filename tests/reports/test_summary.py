"""`bertetl summary` counts only outputs that can be trusted and names the others: with
manifests, those that verify against them; without, those that read. Never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bertetl.cli import app
from bertetl.config import EngineConfig
from bertetl.errors import InputError
from bertetl.executors.local import LocalExecutor
from bertetl.io.manifest import MANIFEST_NAME
from bertetl.reports.summary import summarize
from bertetl.runs.enrich import enrich
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import enrich_partition


@pytest.fixture
def config(tiny_embed_dir: Path) -> EngineConfig:
    return EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))


def scramble_pages(path: Path) -> None:
    """Flip every byte between the magic and the footer: the footer still reads."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for at in range(4, len(data) - footer):
        data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    pq.read_metadata(path)


def truncate_half(path: Path) -> int:
    size = path.stat().st_size
    os.truncate(path, size // 2)
    return size


def summary_cli(*args: str):
    return CliRunner().invoke(app, ["summary", *args])


def test_enrich_output_with_broken_files_names_each_and_counts_the_rest(
    config, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=4, rows=12), tmp_path / "dest"
    enrich(src, dest, config)
    truncate_half(dest / "date=2026-01-02" / "part-0.parquet")
    (dest / "date=2026-01-03" / "part-0.parquet").write_bytes(b"not parquet at all")
    scramble_pages(dest / "date=2026-01-04" / "part-0.parquet")

    tables = summarize(dest, "date")
    assert tables["rows"].rows() == [("2026-01-01", 12, 10, 2, 0)]
    damaged = tables["damaged"]
    assert damaged["file"].to_list() == [f"date=2026-01-0{d}/part-0.parquet" for d in (2, 3, 4)]
    assert all(p.startswith("unreadable (") for p in damaged["problem"])

    result = summary_cli(str(dest), "--partition-column", "date")
    assert result.exit_code == 3 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    listed = result.stdout.split("damaged (not counted above):\n", 1)[1].splitlines()
    assert [line.split(": ", 1)[0] for line in listed] == [
        f"  date=2026-01-0{d}/part-0.parquet" for d in (2, 3, 4)
    ]
    assert result.stderr.startswith("error: 3 damaged output file(s) in 3 folder(s)")


def test_a_single_corrupt_output_file_is_one_line(config, write_table, tmp_path: Path) -> None:
    source = write_table({"text": ["a movie that was good", "bad", None]})
    out = tmp_path / "out.parquet"
    enrich(source, out, config)
    assert summary_cli(str(out)).exit_code == 0
    truncate_half(out)
    result = summary_cli(str(out))
    assert result.exit_code == 3 and "Traceback" not in result.output
    (line,) = result.stdout.split("damaged (not counted above):\n", 1)[1].splitlines()
    assert line.startswith("  out.parquet: unreadable (")


def test_a_folder_that_is_not_bertetl_output_is_an_error(partitioned_source) -> None:
    src = partitioned_source(days=1, rows=12)
    with pytest.raises(InputError, match="not bertetl output"):
        summarize(src)
    result = summary_cli(str(src))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "not bertetl output" in result.stderr


def committed(config: EngineConfig, src: Path, dest: Path) -> None:
    """A partitioned run's output (manifests), without Prefect."""
    executor = LocalExecutor(config)
    executor.setup()
    try:
        plan = plan_partitions(src, dest, "date", config)
        for item in plan.by_action("enrich"):
            enrich_partition(executor, item, dest, plan)
    finally:
        executor.teardown()


def test_with_manifests_only_verified_listed_outputs_are_read(
    config, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=4, rows=12, files_per_day=2), tmp_path / "dest"
    committed(config, src, dest)
    (dest / "date=2026-01-01" / "part-1.parquet").unlink()
    size = truncate_half(dest / "date=2026-01-02" / "part-0.parquet")
    # not listed by its manifest: not read (its rows would count twice), not reported
    extra = dest / "date=2026-01-03" / "extra.parquet"
    extra.write_bytes((dest / "date=2026-01-03" / "part-0.parquet").read_bytes())
    (dest / "date=2026-01-04" / MANIFEST_NAME).write_text("{not json")

    tables = summarize(dest, "date")
    assert tables["rows"].rows() == [
        ("2026-01-01", 6, 5, 1, 0),
        ("2026-01-02", 6, 5, 1, 0),
        ("2026-01-03", 12, 10, 2, 0),
        ("2026-01-04", 12, 10, 2, 0),  # unreadable manifest: its files are read as found
    ]
    assert tables["damaged"].rows() == [
        ("date=2026-01-01", "date=2026-01-01/part-1.parquet", "missing"),
        (
            "date=2026-01-02",
            "date=2026-01-02/part-0.parquet",
            f"truncated ({size // 2:,} of {size:,} bytes)",
        ),
        (
            "date=2026-01-04",
            f"date=2026-01-04/{MANIFEST_NAME}",
            "unreadable manifest; the folder's files are read as found",
        ),
    ]


def test_with_every_output_gone_the_damage_is_the_report(
    config, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=2, rows=12), tmp_path / "dest"
    committed(config, src, dest)
    for path in dest.glob("*/*.parquet"):
        path.unlink()
    tables = summarize(dest, "date")
    assert list(tables) == ["damaged"]
    assert tables["damaged"]["problem"].to_list() == ["missing", "missing"]
    result = summary_cli(str(dest))
    assert result.exit_code == 3 and "Traceback" not in result.output


def test_a_missing_table_or_an_unknown_partition_column_is_one_line_and_exit_1(
    config, partitioned_source, tmp_path: Path
) -> None:
    """Nothing to summarize is an error, not an empty exit 0: a table that does not exist,
    or a partition column no file of DEST is partitioned by (its rows were all summed under
    one empty partition)."""
    missing = f"delta://{tmp_path / 'nothere'}"
    with pytest.raises(InputError, match="does not exist"):
        summarize(missing, "date")
    result = summary_cli(missing, "--partition-column", "date")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    src, dest = partitioned_source(days=2, rows=12), tmp_path / "dest"
    committed(config, src, dest)
    with pytest.raises(InputError, match=r"--partition-column day: .*partition columns: date"):
        summarize(dest, "day")
    result = summary_cli(str(dest), "--partition-column", "day")
    assert result.exit_code == 1 and result.stderr.startswith("error: --partition-column day")


def test_a_plain_file_beside_outputs_is_named_not_counted_and_not_damage(
    config, partitioned_source, tmp_path: Path
) -> None:
    """A Parquet file of the user's own among `bertetl enrich`'s outputs is listed as not
    bertetl output, left out of the counts, and is no damage (exit 0)."""
    src, dest = partitioned_source(days=2, rows=12), tmp_path / "dest"
    enrich(src, dest, config)
    pq.write_table(
        pq.read_table(src / "date=2026-01-01" / "part-0.parquet"), dest / "theirs.parquet"
    )
    tables = summarize(dest, "date")
    assert "damaged" not in tables
    assert tables["foreign"]["file"].to_list() == ["theirs.parquet"]
    assert sum(tables["rows"]["rows"].to_list()) == 24  # theirs is not counted
    result = summary_cli(str(dest), "--partition-column", "date")
    assert result.exit_code == 0, result.output
    assert "not bertetl output (left out, not counted above):\n  theirs.parquet" in result.stdout


def test_a_damaged_partition_shows_no_drift(config, partitioned_source, tmp_path: Path) -> None:
    """Drift is computed from manifests; a partition whose outputs no longer verify against
    its manifest is left out of the drift table, and the summary says so."""
    src, dest = partitioned_source(days=3, rows=12), tmp_path / "dest"
    committed(config, src, dest)
    truncate_half(dest / "date=2026-01-02" / "part-0.parquet")
    result = summary_cli(str(dest), "--partition-column", "date")
    assert result.exit_code == 3
    drift = result.stdout.split("drift (", 1)[1].split("damaged (not counted above)", 1)[0]
    assert "2026-01-01" in drift and "2026-01-03" in drift and "2026-01-02" not in drift
    assert "1 damaged partition(s) left out" in drift


def test_a_copy_in_a_committed_partition_is_named_and_left_out(
    config, partitioned_source, tmp_path: Path
) -> None:
    """A copy of an output in a committed partition folder (not listed by its manifest) is
    left out of the counts, as its manifest says, and now named as not bertetl output: readers
    of the folder see its rows, and the summary said nothing while counting half of them."""
    src, dest = partitioned_source(days=2, rows=12), tmp_path / "dest"
    committed(config, src, dest)
    folder = dest / "date=2026-01-01"
    (folder / "backup-copy.parquet").write_bytes((folder / "part-0.parquet").read_bytes())
    tables = summarize(dest, "date")
    assert "damaged" not in tables and sum(tables["rows"]["rows"].to_list()) == 24
    assert tables["foreign"]["file"].to_list() == ["date=2026-01-01/backup-copy.parquet"]
    result = summary_cli(str(dest), "--partition-column", "date")
    assert result.exit_code == 0 and "backup-copy.parquet: not bertetl output" in result.stdout
