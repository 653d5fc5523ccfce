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


def test_float_vectors_are_byte_stream_split_and_round_trip(tmp_path: Path) -> None:
    import numpy as np

    vectors = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    table = pa.table(
        {
            "text": ["a", "b"] * 25,
            "tags": [["x"], []] * 25,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 6),
            "score": pa.array(vectors[:, 0]),
        }
    )
    with ParquetSink(tmp_path / "out.parquet", table.schema) as sink:
        sink.write(table.to_batches()[0])
    assert pq.read_table(tmp_path / "out.parquet").equals(table)
    row_group = pq.read_metadata(tmp_path / "out.parquet").row_group(0)
    encodings = {
        row_group.column(i).path_in_schema: row_group.column(i).encodings
        for i in range(row_group.num_columns)
    }
    assert "BYTE_STREAM_SPLIT" in encodings["embedding.list.element"]
    assert "RLE_DICTIONARY" not in encodings["embedding.list.element"]
    assert (
        "RLE_DICTIONARY" in encodings["text"] and "RLE_DICTIONARY" in encodings["tags.list.element"]
    )
