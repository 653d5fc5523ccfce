"""Rule 4: discovery terminates and sees each file once.

SOURCE trees with link loops (`ln -s . self`, a link to a parent), two loops at once, and one
real file or folder reached under two names: every command reads each real file once and
ends. Links to folders that are not loops are followed, as users link partitions in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bertetl.cli import app
from bertetl.io.partitions import list_partitions
from bertetl.io.read import discover

pytestmark = pytest.mark.timeout(120)  # a loop that is followed hangs: fail, do not wait


def rows_under(folder: Path) -> dict[str, int]:
    """Rows of each data file under `folder` (hidden and `_` names skipped, links not
    followed: what was really written)."""
    found = {}
    for here, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith((".", "_"))]
        for name in files:
            if name.endswith(".parquet") and not name.startswith((".", "_")):
                path = Path(here) / name
                found[path.relative_to(folder).as_posix()] = pq.read_metadata(path).num_rows
    return found


def run(command: str, src: Path | str, dest: Path, model: Path):
    args = [command, str(src), str(dest), "--text-column", "text", "--embed-model", str(model)]
    if command != "enrich":
        args += ["--partition-column", "date"]
    return CliRunner().invoke(app, args)


def loops(src: Path) -> None:
    """Two loops: SOURCE links to itself, and a partition links back to its parent."""
    (src / "self").symlink_to(".")
    (src / "date=2026-01-01" / "up").symlink_to("..")


EXPECTED = {f"date=2026-01-0{d}/part-{k}.parquet": 12 for d in (1, 2) for k in (0, 1)}


def test_enrich_over_link_loops_writes_each_file_once(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path, caplog
) -> None:
    src = partitioned_source(days=2, files_per_day=2)
    loops(src)
    with caplog.at_level(logging.WARNING, logger="bertetl.io.read"):
        result = run("enrich", src, tmp_path / "dest", tiny_embed_dir)
    assert result.exit_code == 0, result.output
    assert rows_under(tmp_path / "dest") == EXPECTED  # 48 rows in, 48 out, 4 files
    assert "enriched 48 rows from 4 file(s)" in result.output
    assert f"{src}/self is the same folder as {src}" in caplog.text


@pytest.mark.usefixtures("prefect_harness")
def test_backfill_over_link_loops_commits_each_partition_once(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=2, files_per_day=2), tmp_path / "dest"
    loops(src)
    result = run("backfill", src, dest, tiny_embed_dir)
    assert result.exit_code == 0, result.output
    assert "2 partition(s) committed" in result.output and "48 rows written" in result.output
    assert rows_under(dest) == EXPECTED


@pytest.mark.parametrize(
    "pattern",
    ["{src}", "{src}/**/*.parquet", "{src}/*/*.parquet", "{src}/**", "{src}/date=*/*.parquet"],
)
def test_discovery_of_folders_and_globs_ends_on_loops(
    pattern: str, partitioned_source, tmp_path: Path
) -> None:
    src = partitioned_source(days=2, files_per_day=2)
    loops(src)
    (src / "date=2026-01-02" / "again").symlink_to(src)
    files = discover(pattern.format(src=src))
    assert [f.relative for f in files] == sorted(EXPECTED)


def test_one_real_file_under_two_names_is_read_once(partitioned_source, tmp_path: Path) -> None:
    src = partitioned_source(days=2)
    (src / "date=2026-01-01" / "part-9.parquet").symlink_to("part-0.parquet")  # a file link
    os.link(src / "date=2026-01-02" / "part-0.parquet", src / "date=2026-01-02" / "part-8.parquet")
    (src / "date=2026-01-02" / "sub").symlink_to(".")  # the same folder under a second name
    assert [f.relative for f in discover(src)] == [
        "date=2026-01-01/part-0.parquet",
        "date=2026-01-02/part-0.parquet",
    ]


def test_linked_partitions_are_followed_and_the_first_name_wins(
    partitioned_source, tmp_path: Path
) -> None:
    """A partition linked in from elsewhere is read; two names for one partition folder give
    it once, under the first name in sorted order, and the other name is logged."""
    src = partitioned_source(days=2)
    archive = tmp_path / "archive" / "date=2025-12-31"
    archive.mkdir(parents=True)
    (src / "date=2026-01-01" / "part-0.parquet").rename(archive / "part-0.parquet")
    (src / "date=2026-01-01").rmdir()
    (src / "date=2025-12-31").symlink_to(archive)
    (src / "date=2026-01-09").symlink_to(archive)
    partitions = list_partitions(src, "date")
    assert [(p.value, [f.relative for f in p.files]) for p in partitions] == [
        ("2025-12-31", ["date=2025-12-31/part-0.parquet"]),
        ("2026-01-02", ["date=2026-01-02/part-0.parquet"]),
    ]
    assert partitions[0].files[0].path == str(src / "date=2025-12-31" / "part-0.parquet")
