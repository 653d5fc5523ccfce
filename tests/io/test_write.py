from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.io.write import ParquetSink

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.large_string())])


def _batch(ids: list[int]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"id": ids, "text": [str(i) for i in ids]}, schema=SCHEMA)


def test_round_trip_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "out" / "part.parquet"
    with ParquetSink(target, SCHEMA) as sink:
        sink.write(_batch([1, 2]))
        assert not target.exists(), "the target must not appear before commit"
        sink.write(_batch([3]))
    table = pq.read_table(target)
    assert table.schema == SCHEMA
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert sorted(p.name for p in target.parent.iterdir()) == ["part.parquet"]


def test_abort_keeps_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "part.parquet"
    with ParquetSink(target, SCHEMA) as sink:
        sink.write(_batch([1]))
    with pytest.raises(RuntimeError), ParquetSink(target, SCHEMA) as sink:
        sink.write(_batch([7, 8, 9]))
        raise RuntimeError("boom mid-write")
    assert pq.read_table(target).column("id").to_pylist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["part.parquet"]


def test_temp_file_is_hidden_from_dataset_readers(tmp_path: Path) -> None:
    import pyarrow.dataset as ds

    target = tmp_path / "part.parquet"
    sink = ParquetSink(target, SCHEMA).open()
    sink.write(_batch([1]))
    assert sink.temp_path.name.startswith(".")
    assert ds.dataset(tmp_path, format="parquet").files == []
    sink.abort()
    assert list(tmp_path.iterdir()) == []
