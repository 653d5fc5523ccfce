from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from bertetl.errors import InputError
from bertetl.io.read import SourceFile, check_text_column, discover, read_schema, stream


def test_discover_directory_with_hive_partitions_skips_hidden(write_table, tmp_path: Path) -> None:
    for date in ["2026-11-01", "2026-11-02"]:
        write_table({"text": ["a"]}, f"src/date={date}/part-0.parquet")
    write_table({"text": ["a"]}, "src/_tmp/part-0.parquet")
    write_table({"text": ["a"]}, "src/date=2026-11-01/.part-1.parquet")
    (tmp_path / "src" / "_SUCCESS").write_text("")
    files = discover(tmp_path / "src")
    assert [f.relative for f in files] == [
        "date=2026-11-01/part-0.parquet",
        "date=2026-11-02/part-0.parquet",
    ]
    assert files[0].partition == {"date": "2026-11-01"}


def test_discover_glob_and_single_file(write_table, tmp_path: Path) -> None:
    write_table({"text": ["a"]}, "src/a/x.parquet")
    write_table({"text": ["a"]}, "src/b/y.parquet")
    found = discover(str(tmp_path / "src" / "*" / "*.parquet"))
    assert [f.relative for f in found] == ["a/x.parquet", "b/y.parquet"]
    single = discover(tmp_path / "src" / "a" / "x.parquet")
    assert [f.relative for f in single] == ["x.parquet"]


def test_discover_missing_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover(tmp_path / "nope")


def test_stream_is_bounded_by_batch_size_and_keeps_order(write_table) -> None:
    path = write_table({"id": list(range(10_000))}, row_group_size=3000)
    batches = list(stream(SourceFile(str(path), path.name), batch_rows=1024))
    assert max(b.num_rows for b in batches) <= 1024
    assert [v for b in batches for v in b.column("id").to_pylist()] == list(range(10_000))


def test_missing_text_column_lists_columns(write_table) -> None:
    path = write_table({"id": [1], "body": ["x"]})
    file = SourceFile(str(path), path.name)
    with pytest.raises(InputError, match=r"'text' not found; columns are: id, body") as info:
        check_text_column(file, read_schema(file), "text")
    assert str(path) in str(info.value)


def test_non_string_text_column_names_its_type(write_table) -> None:
    path = write_table({"text": [1, 2]})
    file = SourceFile(str(path), path.name)
    with pytest.raises(InputError, match="has type int64"):
        check_text_column(file, read_schema(file), "text")


@pytest.mark.parametrize(
    "array",
    [
        pa.array(["a"], pa.string()),
        pa.array(["a"], pa.large_string()),
        pa.array(["a"]).dictionary_encode(),
    ],
)
def test_text_types_accepted(write_table, array: pa.Array) -> None:
    path = write_table(pa.table({"text": array}))
    file = SourceFile(str(path), path.name)
    check_text_column(file, read_schema(file), "text")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    file = SourceFile(str(path), path.name)
    with pytest.raises(InputError, match=r"broken\.parquet"):
        read_schema(file)
    with pytest.raises(InputError, match=r"broken\.parquet"):
        list(stream(file, 10))


def test_file_or_folder_inside_a_partition_keeps_its_partition(write_table, tmp_path: Path) -> None:
    write_table({"text": ["a"]}, "src/date=2026-11-01/part-0.parquet")
    (one,) = discover(tmp_path / "src" / "date=2026-11-01" / "part-0.parquet")
    assert one.relative == "date=2026-11-01/part-0.parquet"
    assert one.partition == {"date": "2026-11-01"}
    (same,) = discover(tmp_path / "src" / "date=2026-11-01")
    assert same == one


def test_explicit_hidden_name_and_literal_brackets(write_table, tmp_path: Path) -> None:
    path = write_table({"text": ["a"]}, "src/_f.parquet")
    assert [f.relative for f in discover(path)] == ["_f.parquet"]
    bracket = write_table({"text": ["a"]}, "src/[x].parquet")
    assert [f.path for f in discover(bracket)] == [str(bracket)]


STREAM_PEAK = """
import sys, time, pyarrow as pa
from bertetl.io.read import SourceFile, stream
for batch in stream(SourceFile(sys.argv[1], "f.parquet"), 1000):
    time.sleep(0.002)  # a slow consumer, as the model is: no read-ahead may pile up
print(pa.default_memory_pool().max_memory())
"""


def test_stream_memory_does_not_grow_with_file_size(write_table, tmp_path: Path) -> None:
    import subprocess
    import sys

    peaks = []
    for rows in (20_000, 300_000):
        text = pa.array([f"row {i} " + "words " * (i % 50) for i in range(rows)])
        path = write_table(
            {"id": list(range(rows)), "text": text}, f"{rows}.parquet", row_group_size=5000
        )
        run = subprocess.run(
            [sys.executable, "-c", STREAM_PEAK, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(int(run.stdout))
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_files_that_are_not_parquet_are_skipped_with_a_warning(
    write_table, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A README, a CSV or notes beside the data in a SOURCE folder are skipped, each named in
    a warning; an extensionless file that is Parquet (by its magic) is read; a file named as
    Parquet that is not is still read (and fails by name); a file named exactly is taken."""
    write_table({"text": ["a"]}, "src/date=1/part-0.parquet")
    write_table({"text": ["b"]}, "src/date=1/000000_0")  # Hive's extensionless data file
    (tmp_path / "src" / "README.md").write_text("# what this table is")
    (tmp_path / "src" / "date=1" / "notes.csv").write_text("a,b\n1,2\n")
    (tmp_path / "src" / "date=1" / "broken.parquet").write_bytes(b"not parquet at all")
    found = [f.relative for f in discover(tmp_path / "src")]
    assert found == ["date=1/000000_0", "date=1/broken.parquet", "date=1/part-0.parquet"]
    assert "README.md is not a Parquet file" in caplog.text
    assert "notes.csv is not a Parquet file" in caplog.text
    (named,) = discover(tmp_path / "src" / "README.md")  # named by the user: taken, and fails
    assert named.relative == "README.md"


def test_two_partition_folders_linked_to_each_other_are_each_read_once_where_they_are(
    write_table, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A link cycle between two folders of SOURCE (date=1/sub -> date=2, date=2/sub -> date=1)
    is not followed, each link named in a warning: every file is read once, in its own
    partition (day 2's file was read through day 1's link, as a row of day 1). A partition
    linked in from outside SOURCE is still followed, and a linked SOURCE itself is read."""
    write_table({"text": ["one"]}, "src/date=1/part-0.parquet")
    write_table({"text": ["two"]}, "src/date=2/part-0.parquet")
    write_table({"text": ["three"]}, "archive/date=3/part-0.parquet")
    (tmp_path / "src" / "date=1" / "sub").symlink_to(tmp_path / "src" / "date=2")
    (tmp_path / "src" / "date=2" / "sub").symlink_to(tmp_path / "src" / "date=1")
    (tmp_path / "src" / "date=3").symlink_to(tmp_path / "archive" / "date=3")
    found = {f.relative: f.partition["date"] for f in discover(tmp_path / "src")}
    assert found == {
        "date=1/part-0.parquet": "1",
        "date=2/part-0.parquet": "2",
        "date=3/part-0.parquet": "3",
    }
    assert "date=1/sub is the same folder as" in caplog.text
    assert "date=2/sub is the same folder as" in caplog.text
    (tmp_path / "srclink").symlink_to(tmp_path / "src")
    assert len(discover(tmp_path / "srclink")) == 3
