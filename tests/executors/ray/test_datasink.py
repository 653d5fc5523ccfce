"""The Ray sink's commit, without a cluster: parts in any order, repeated rows, gaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.executors.ray.datasink import (
    CommitOptions,
    FileTarget,
    Part,
    commit_file,
    runs,
    write_part,
)

pytestmark = pytest.mark.ray
SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("enrich_error", pa.string())])
OPTIONS = CommitOptions("enrich_error", ["label"])


def rows(first: int, count: int) -> pa.Table:
    ids = list(range(first, first + count))
    return pa.table(
        {
            "id": ids,
            "label": ["even" if i % 2 == 0 else "odd" for i in ids],
            "enrich_error": [None if i % 5 else "text is null" for i in ids],
        },
        schema=SCHEMA,
    )


def parts(folder: Path, ranges: list[tuple[int, int]]) -> list[Part]:
    made = []
    for number, (first, count) in enumerate(ranges):
        path = folder / f"{first:012d}-{number}.arrow"
        write_part(rows(first, count), path)
        made.append(Part(0, first, count, str(path)))
    return made


def test_runs_split_positions_into_consecutive_sorted_runs() -> None:
    positions = np.array([5, 6, 0, 1, 2, 9, 7, 7])
    assert [positions[run].tolist() for run in runs(positions)] == [[0, 1, 2], [5, 6, 7], [7], [9]]


def test_parts_in_any_order_with_repeats_make_one_ordered_file(tmp_path: Path) -> None:
    # a re-executed block repeats rows 10..19 in a part of its own, and 15..24 overlap
    made = parts(tmp_path / "parts", [(20, 10), (0, 10), (10, 10), (10, 10), (15, 10)])
    target = FileTarget(0, "src.parquet", str(tmp_path / "out.parquet"), 30, SCHEMA)
    result = commit_file(target, made, OPTIONS)
    assert result.error is None and result.rows == 30
    written = pq.read_table(tmp_path / "out.parquet")
    assert written.equals(rows(0, 30))
    assert result.rows_failed == 6  # ids 0, 5, ..., 25
    assert result.label_counts == {"label": {"even": 15, "odd": 15}}


def test_a_gap_fails_the_file_and_writes_nothing(tmp_path: Path) -> None:
    made = parts(tmp_path / "parts", [(0, 10), (20, 10)])
    target = FileTarget(0, "src.parquet", str(tmp_path / "out.parquet"), 30, SCHEMA)
    result = commit_file(target, made, OPTIONS)
    assert result.error is not None and "rows 10..29 of 30" in result.error
    assert "src.parquet" in result.error and result.dest is None
    assert list(tmp_path.glob("*.parquet")) == [] and list(tmp_path.glob(".*")) == []


def test_an_empty_file_is_committed_empty(tmp_path: Path) -> None:
    target = FileTarget(0, "src.parquet", str(tmp_path / "out.parquet"), 0, SCHEMA)
    result = commit_file(target, [], OPTIONS)
    assert result.error is None and result.rows == 0
    assert pq.read_table(tmp_path / "out.parquet").schema.equals(SCHEMA)
