"""`bertetl.io.partitions`: a source's hive partitions (values, ranges, folders), where each
goes under DEST, and the refusal of files bertetl did not write there.

References: `urllib.parse.quote` writes the folder names and pyarrow's own hive partitioning
(`pyarrow.dataset`) reads the values back; boto3 lists what is on the S3 server (moto on
loopback) for the object-store cases.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import quote

import boto3
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertetl.errors import InputError
from bertetl.io.partitions import (
    COMMIT_INTENT,
    Partition,
    check_foreign_files,
    dest_folder,
    foreign_files,
    is_output,
    list_partitions,
    owned_files,
    remote_files,
)
from bertetl.io.stores.locations import parse_location
from bertetl.schema import ENRICH_ERROR


def _write(path: Path, rows: int = 2, **extra: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(rows)), **extra}), path)
    return path


def _output(path: Path) -> Path:
    """A file as bertetl writes it: its columns plus `enrich_error`."""
    return _write(path, **{ENRICH_ERROR: [None, None]})


def _hive_values(root: Path, column: str) -> list[str]:
    """The partition values pyarrow's own hive partitioning reads (URI-decoded segments)."""
    schema = pa.schema([(column, pa.string())])
    hive = ds.partitioning(schema, flavor="hive")
    dataset = ds.dataset(root, format="parquet", partitioning=hive)
    return sorted(set(dataset.to_table(columns=[column]).column(column).to_pylist()))


@settings(max_examples=40, deadline=None)
@given(
    values=st.sets(
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12),
        min_size=1,
        max_size=5,
    )
)
def test_partition_values_round_trip_through_escaped_folder_names(values: set[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for value in values:
            _write(root / f"day={quote(value, safe='')}" / "part-0.parquet")
        partitions = list_partitions(root, "day")
        assert [p.value for p in partitions] == sorted(values) == _hive_values(root, "day")
        for partition in partitions:
            assert partition.folder == f"day={quote(partition.value, safe='')}"
            assert [partition.relative(f) for f in partition.files] == ["part-0.parquet"]


def test_a_range_is_inclusive_and_compared_as_strings(tmp_path: Path) -> None:
    days = ["2026-10-31", "2026-11-01", "2026-11-02", "2026-11-10"]
    for day in days:
        for name in ("part-0.parquet", "part-1.parquet"):
            _write(tmp_path / f"date={day}" / name)
    assert [p.value for p in list_partitions(tmp_path, "date")] == days
    picked = list_partitions(tmp_path, "date", start="2026-11-01", end="2026-11-02")
    assert [p.value for p in picked] == ["2026-11-01", "2026-11-02"]
    assert [p.value for p in list_partitions(tmp_path, "date", start="2026-11-02")] == days[2:]
    assert [p.value for p in list_partitions(tmp_path, "date", end="2026-11")] == days[:1]
    files = picked[0].files
    assert [f.relative for f in files] == [f"date=2026-11-01/part-{i}.parquet" for i in (0, 1)]
    with pytest.raises(InputError) as refused:
        list_partitions(tmp_path, "date", start="2026-12-01", end="2026-11-01")
    assert str(refused.value) == (
        f"no partition of {tmp_path} has date in [2026-12-01, 2026-11-01]; its 4 partition(s) "
        "run from date=2026-10-31 to date=2026-11-10: pick a range that holds some"
    )
    with pytest.raises(InputError, match=r"in \[\(first\), 2026-01-01\]"):
        list_partitions(tmp_path, "date", end="2026-01-01")


def test_nested_partitions_group_by_the_column_asked_for(tmp_path: Path) -> None:
    for day, hour in [("1", "00"), ("1", "12"), ("2", "00")]:
        _write(tmp_path / f"date={day}" / f"hour={hour}" / "part-0.parquet")
    by_date = list_partitions(tmp_path, "date")
    assert [(p.value, p.folder, len(p.files)) for p in by_date] == [
        ("1", "date=1", 2),
        ("2", "date=2", 1),
    ]
    assert [by_date[0].relative(f) for f in by_date[0].files] == [
        "hour=00/part-0.parquet",
        "hour=12/part-0.parquet",
    ]
    # one hour value under two dates is two folders: refused, naming both
    with pytest.raises(InputError, match="hour=00 appears in two folders: date=1/hour=00 and"):
        list_partitions(tmp_path, "hour")


def test_one_value_in_two_spellings_or_outside_a_partition_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "src" / "day=a b" / "part-0.parquet")
    _write(tmp_path / "src" / "day=a%20b" / "part-0.parquet")
    with pytest.raises(InputError, match="day=a b appears in two folders"):
        list_partitions(tmp_path / "src", "day")
    _write(tmp_path / "flat" / "part-0.parquet")
    with pytest.raises(InputError, match="is not inside a day=VALUE folder"):
        list_partitions(tmp_path / "flat", "day")


def _partition(folder: str, dest_name: str | None = None) -> Partition:
    return Partition("date", "v", folder, (), dest_name=dest_name)


def test_dest_folder_stays_inside_dest(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    root = dest.resolve()
    assert dest_folder(dest, _partition("date=1")) == root / "date=1"
    assert dest_folder(str(dest), _partition("date=a b", "date=a%20b")) == root / "date=a%20b"
    assert dest_folder(parse_location(str(dest)), _partition("date=1")) == root / "date=1"
    for escaping in ["../date=1", "date=1/../../x", ".", "/etc"]:
        with pytest.raises(InputError, match="would write outside"):
            dest_folder(dest, _partition(escaping))
    store = parse_location("s3://bucket/out", {"endpoint_url": "http://127.0.0.1:9"})
    assert dest_folder(store, _partition("date=1/")).uri == "s3://bucket/out/date=1"
    for escaping in ["../date=1", "date=1/..", "a/../../date=1", "/date=1", ""]:
        with pytest.raises(InputError, match="would write outside s3://bucket/out"):
            dest_folder(store, _partition(escaping))


def test_a_local_partition_folder_owns_only_bertetl_output(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in ("part-0.parquet", "part-1.parquet"):
        _write(source / "date=1" / name)
    (partition,) = list_partitions(source, "date")
    dest = tmp_path / "out"
    assert check_foreign_files(dest, [partition]) == {"1": frozenset()}  # nothing there yet
    _output(dest / "date=1" / "part-0.parquet")  # an earlier `bertetl enrich`
    _write(dest / "date=1" / "part-1.parquet")  # same name, but not bertetl's
    (dest / "date=1" / "notes.txt").write_text("mine")
    _output(dest / "date=1" / "extra.parquet")  # bertetl output at no path this run writes
    assert is_output(dest / "date=1" / "part-0.parquet")
    assert not is_output(dest / "date=1" / "part-1.parquet")
    assert not is_output(dest / "date=1" / "notes.txt")
    owned = owned_files(dest / "date=1", partition)
    assert owned == {"_manifest.json", "part-0.parquet"}
    assert sorted(foreign_files(dest / "date=1", owned)) == [
        "extra.parquet",
        "notes.txt",
        "part-1.parquet",
    ]
    with pytest.raises(InputError) as refused:
        check_foreign_files(dest, [partition])
    assert f"DEST {dest} holds 3 file(s) bertetl did not write" in str(refused.value)
    for name in ("extra.parquet", "notes.txt", "part-1.parquet"):
        assert f"{dest / 'date=1'}/{name}" in str(refused.value)
        (dest / "date=1" / name).unlink()
    assert check_foreign_files(dest, [partition]) == {
        "1": frozenset({"_manifest.json", "part-0.parquet"})
    }


def test_a_file_where_the_partition_folder_goes_is_foreign(tmp_path: Path) -> None:
    _write(tmp_path / "src" / "date=1" / "part-0.parquet")
    (partition,) = list_partitions(tmp_path / "src", "date")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "date=1").write_text("a file, not a folder")
    assert foreign_files(tmp_path / "out" / "date=1", set()) == ["."]
    assert foreign_files(tmp_path / "out" / "date=2", set()) == []  # nothing there
    with pytest.raises(InputError, match=r"holds 1 file\(s\) .*: .*out/date=1;"):
        check_foreign_files(tmp_path / "out", [partition])


def test_only_five_foreign_files_are_named(tmp_path: Path) -> None:
    _write(tmp_path / "src" / "date=1" / "part-0.parquet")
    (partition,) = list_partitions(tmp_path / "src", "date")
    for i in range(7):
        (tmp_path / "out" / "date=1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / "date=1" / f"x{i}.txt").write_text("")
    with pytest.raises(InputError, match=r"holds 7 file\(s\) .*x4\.txt and 2 more;"):
        check_foreign_files(tmp_path / "out", [partition])


def test_an_object_store_partition_owns_every_bertetl_object(
    tmp_path: Path, s3_endpoint, bucket, storage
) -> None:
    _write(tmp_path / "src" / "date=1" / "part-0.parquet")
    partitions = list_partitions(tmp_path / "src", "date")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    _output(tmp_path / "bertetl.parquet")
    _write(tmp_path / "theirs.parquet")
    objects = {
        "out/date=1/part-0.parquet": tmp_path / "bertetl.parquet",
        "out/date=1/old/part-9.parquet": tmp_path / "bertetl.parquet",  # killed mid-commit
        "out/date=1/_SUCCESS": None,
        "out/date=1/theirs.parquet": tmp_path / "theirs.parquet",
        "out/date=2/part-0.parquet": tmp_path / "theirs.parquet",  # outside the run
    }
    for key, path in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes() if path else b"")
    # the killed commit had written what it owned before deleting anything
    intent = json.dumps({"owned": ["part-0.parquet", "old/part-9.parquet"]}).encode()
    s3.put_object(Bucket=bucket, Key=f"out/date=1/{COMMIT_INTENT}", Body=intent)
    dest = parse_location(f"s3://{bucket}/out", storage)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="out/date=1/")["Contents"]
    assert remote_files(dest / "date=1") == sorted(o["Key"][len("out/date=1/") :] for o in listed)
    assert remote_files(dest / "date=3") == []
    owned = owned_files(dest / "date=1", partitions[0])
    assert owned == {"_manifest.json", COMMIT_INTENT, "part-0.parquet", "old/part-9.parquet"}
    with pytest.raises(InputError) as refused:
        check_foreign_files(dest, partitions)
    assert "holds 2 file(s)" in str(refused.value)
    assert f"s3://{bucket}/out/date=1/_SUCCESS" in str(refused.value)
    assert f"s3://{bucket}/out/date=1/theirs.parquet" in str(refused.value)
    s3.delete_objects(
        Bucket=bucket,
        Delete={"Objects": [{"Key": "out/date=1/_SUCCESS"}, {"Key": "out/date=1/theirs.parquet"}]},
    )
    assert check_foreign_files(dest, partitions) == {"1": frozenset(owned)}
