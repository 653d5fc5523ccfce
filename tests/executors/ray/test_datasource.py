"""The Ray read stage, without a cluster: positions, tags and recorded failures."""

from __future__ import annotations

import errno
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.executors.ray.datasource import (
    FILE_COLUMN,
    ROW_COLUMN,
    ReadRange,
    read_errors,
    read_range,
)
from bertetl.io.read import discover

pytestmark = pytest.mark.ray


@pytest.fixture
def source(tmp_path: Path):
    path = tmp_path / "src" / "part-0.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(50)]}), path, row_group_size=10)
    (file,) = discover(path)
    return file


def test_a_range_is_tagged_with_its_file_and_row_positions(source, tmp_path: Path) -> None:
    part = ReadRange(index=3, file=source, first=20, rows=20, row_groups=(2, 3))
    tables = list(read_range(part, window_rows=8, errors_dir=str(tmp_path / "errors")))
    assert [t.num_rows for t in tables] == [8, 8, 4]  # windows of the range's row groups
    table = pa.concat_tables(tables)
    assert table.column(ROW_COLUMN).to_pylist() == list(range(20, 40))
    assert set(table.column(FILE_COLUMN).to_pylist()) == {3}
    assert table.column("text").to_pylist() == [f"row {i}" for i in range(20, 40)]
    assert read_errors(str(tmp_path / "errors")) == {}


def test_a_read_failure_is_recorded_with_whether_a_retry_may_help(
    source, tmp_path: Path, monkeypatch
) -> None:
    real = pq.ParquetFile
    failures = iter([OSError(errno.EIO, "flaky disk"), PermissionError(errno.EACCES, "denied")])

    def failing(*args, **kwargs):
        raise next(failures)

    monkeypatch.setattr(pq, "ParquetFile", failing)
    errors = str(tmp_path / "errors")
    for index in (0, 1):
        part = ReadRange(index=index, file=source, first=0, rows=50)
        assert list(read_range(part, window_rows=8, errors_dir=errors)) == []
    monkeypatch.setattr(pq, "ParquetFile", real)
    found = read_errors(errors)
    assert found[0][1] is True and "flaky disk" in found[0][0] and source.path in found[0][0]
    assert found[1][1] is False and "denied" in found[1][0]
