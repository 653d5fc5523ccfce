"""`bertetl.io.chunks`: cutting a source into chunks of whole row groups, and assembling a
split file's parts back into its one output.

The reference is the Parquet files themselves: row groups as pyarrow's footer reports them,
rows read back with `ParquetFile.read_row_groups` and `pq.read_table`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertetl.errors import CommitError, InputError
from bertetl.io.chunks import Chunk, assemble, cut_row_groups, plan_chunks
from bertetl.io.read import discover, read_schema
from bertetl.io.stores.locations import parse_location


def _write_groups(path: Path, sizes: list[int]) -> pa.Table:
    """A Parquet file whose row groups hold `sizes` rows (one `write_table` per group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    tables, start = [], 0
    with pq.ParquetWriter(path, schema) as writer:
        for size in sizes:
            table = pa.table(
                {"id": range(start, start + size), "text": [f"row {i}" for i in range(size)]},
                schema=schema,
            )
            writer.write_table(table, row_group_size=max(size, 1))
            tables.append(table)
            start += size
    assert [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(len(sizes))] == sizes
    return pa.concat_tables(tables) if tables else schema.empty_table()


def test_row_groups_are_cut_into_ranges_of_about_chunk_rows(tmp_path: Path) -> None:
    _write_groups(tmp_path / "f.parquet", [3, 3, 3, 3])
    metadata = pq.ParquetFile(tmp_path / "f.parquet").metadata
    assert cut_row_groups(metadata, 6) == [((0, 1), 6), ((2, 3), 6)]
    assert cut_row_groups(metadata, 7) == [((0, 1), 6), ((2, 3), 6)]
    assert cut_row_groups(metadata, 9) == [((0, 1, 2), 9), ((3,), 3)]
    assert cut_row_groups(metadata, 100) == [((0, 1, 2, 3), 12)]
    # a group bigger than chunk_rows is a range of its own, never split
    assert cut_row_groups(metadata, 2) == [((0,), 3), ((1,), 3), ((2,), 3), ((3,), 3)]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    chunk_rows=st.integers(1, 100),
)
def test_ranges_cover_every_row_group_once_in_order(sizes: list[int], chunk_rows: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.parquet"
        whole = _write_groups(path, sizes)
        parquet = pq.ParquetFile(path)
        ranges = cut_row_groups(parquet.metadata, chunk_rows)
        groups = [g for range_groups, _ in ranges for g in range_groups]
        assert groups == list(range(len(sizes)))  # every group once, in order
        for (range_groups, rows), following in zip(ranges, [*ranges[1:], None], strict=True):
            assert rows == sum(sizes[g] for g in range_groups)
            assert rows <= chunk_rows or len(range_groups) == 1
            if following is not None:  # greedy: the next group did not fit
                assert rows + sizes[following[0][0]] > chunk_rows
        parts = [parquet.read_row_groups(list(g)) for g, _ in ranges]
        assert pa.concat_tables(parts).equals(whole)


def test_a_file_without_row_groups_is_one_empty_range(tmp_path: Path) -> None:
    _write_groups(tmp_path / "empty.parquet", [])
    metadata = pq.ParquetFile(tmp_path / "empty.parquet").metadata
    assert metadata.num_row_groups == 0
    assert cut_row_groups(metadata, 10) == [((), 0)]


def _schema_or_refuse(file) -> pa.Schema:
    schema = read_schema(file)
    if "text" not in schema.names:
        raise InputError(f"{file.path}: no column text")
    return schema


def test_plan_cuts_big_files_and_names_the_files_that_fail(tmp_path: Path) -> None:
    source, dest = tmp_path / "src", tmp_path / "out"
    _write_groups(source / "date=1" / "big.parquet", [4, 4, 4, 4, 4])
    _write_groups(source / "date=1" / "small.parquet", [3])
    (source / "date=2").mkdir()
    pq.write_table(pa.table({"id": [1]}), source / "date=2" / "notext.parquet")
    (source / "date=2" / "broken.parquet").write_bytes(b"not parquet at all")
    files = discover(source)
    chunks, failures = plan_chunks(files, source, dest, _schema_or_refuse, chunk_rows=8)

    assert sorted(failures) == sorted(
        str(source / "date=2" / name) for name in ("broken.parquet", "notext.parquet")
    )
    assert "no column text" in failures[str(source / "date=2" / "notext.parquet")]
    big = [c for c in chunks if c.file.relative == "date=1/big.parquet"]
    assert [(c.row_groups, c.rows, c.part, c.parts) for c in big] == [
        ((0, 1), 8, 0, 3),
        ((2, 3), 8, 1, 3),
        ((4,), 4, 2, 3),
    ]
    assert {c.target for c in big} == {dest / "date=1" / "big.parquet"}
    assert [c.name for c in big] == [f"date=1/big.parquet [part {i}/3]" for i in (1, 2, 3)]
    assert big[1].part_path(tmp_path / "staging") == (
        tmp_path / "staging" / "date=1" / "big.parquet.part-00001.parquet"
    )
    (small,) = [c for c in chunks if c.file.relative == "date=1/small.parquet"]
    assert (small.row_groups, small.rows, small.parts, small.name) == (
        None,
        3,
        1,
        "date=1/small.parquet",
    )
    assert small.target == dest / "date=1" / "small.parquet"
    assert small.schema == pq.read_schema(source / "date=1" / "small.parquet")
    # every row of every good file is in exactly one chunk
    assert sum(c.rows for c in chunks) == 20 + 3


def test_parts_assemble_into_the_one_output_in_order(tmp_path: Path) -> None:
    whole = _write_groups(tmp_path / "src" / "f.parquet", [5, 5, 5, 2])
    parquet = pq.ParquetFile(tmp_path / "src" / "f.parquet")
    (file,) = discover(tmp_path / "src")
    chunks, _ = plan_chunks([file], tmp_path / "src", tmp_path / "out", read_schema, 10)
    parts = []
    for chunk in chunks:
        assert chunk.row_groups is not None
        path = chunk.part_path(tmp_path / "staging")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(parquet.read_row_groups(list(chunk.row_groups)), path)
        parts.append(path)
    assert len(parts) == 2
    target = chunks[0].target
    assert assemble(parts, target, chunks[0].schema) == whole.num_rows
    assert pq.read_table(target).equals(whole)
    assert not any(path.exists() for path in parts)  # removed once committed
    assert sorted(p.name for p in Path(target).parent.iterdir()) == ["f.parquet"]


def test_a_bad_part_commits_nothing_and_keeps_the_parts(tmp_path: Path) -> None:
    _write_groups(tmp_path / "part-0.parquet", [4])
    (tmp_path / "part-1.parquet").write_bytes(b"truncated")
    target = tmp_path / "out" / "f.parquet"
    target.parent.mkdir()
    pq.write_table(pa.table({"id": [7], "text": ["earlier output"]}), target)
    earlier = target.read_bytes()
    schema = pq.read_schema(tmp_path / "part-0.parquet")
    with pytest.raises(CommitError, match=r"cannot assemble .*f\.parquet from its parts"):
        assemble([tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"], target, schema)
    assert target.read_bytes() == earlier  # the earlier output is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.parquet"]  # no temp file
    assert (tmp_path / "part-0.parquet").exists() and (tmp_path / "part-1.parquet").exists()


def test_parts_assemble_into_an_object_on_the_store(
    tmp_path: Path, s3_endpoint, bucket, storage
) -> None:
    whole = _write_groups(tmp_path / "f.parquet", [3, 3])
    parquet = pq.ParquetFile(tmp_path / "f.parquet")
    parts = []
    for group in range(2):
        parts.append(tmp_path / f"part-{group}.parquet")
        pq.write_table(parquet.read_row_groups([group]), parts[-1])
    target = parse_location(f"s3://{bucket}/out/f.parquet", storage)
    assert assemble(parts, target, whole.schema) == 6
    body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(
        Bucket=bucket, Key="out/f.parquet"
    )["Body"]
    (tmp_path / "downloaded.parquet").write_bytes(body.read())
    assert pq.read_table(tmp_path / "downloaded.parquet").equals(whole)
    assert not any(path.exists() for path in parts)


def test_a_chunk_of_a_whole_file_has_no_part_number(tmp_path: Path) -> None:
    _write_groups(tmp_path / "src" / "f.parquet", [2])
    (file,) = discover(tmp_path / "src")
    chunk = Chunk(file, tmp_path / "out" / "f.parquet", read_schema(file), 2)
    assert chunk.name == "f.parquet" and chunk.row_groups is None
