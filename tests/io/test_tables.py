"""Table addresses, one-transaction partition commits with their manifest in the commit's
metadata, and the checks that find a partition changed behind bertetl's back (Delta Lake and
Iceberg on a local folder / SQLite catalog)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.io.commit import destination_lock
from bertetl.io.stores.locations import StorageError, TableRef, parse_table, resolve_run
from bertetl.io.tables import (
    commit_partition,
    commit_problem,
    commit_records,
    count_commits,
    lock_place,
    pin,
    source_partitions,
)

pytest.importorskip("deltalake")
pytest.importorskip("pyiceberg")


@pytest.fixture
def iceberg_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQL catalog `local` on SQLite with a local warehouse, from PYICEBERG_ variables."""
    import pyiceberg.catalog
    from pyiceberg.utils.config import Config

    (tmp_path / "warehouse").mkdir()
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__URI", f"sqlite:///{tmp_path / 'catalog.db'}")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__WAREHOUSE", f"file://{tmp_path / 'warehouse'}")
    monkeypatch.setattr(pyiceberg.catalog, "_ENV_CONFIG", Config())
    return "local"


@pytest.fixture(params=["delta", "iceberg"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> TableRef:
    if request.param == "delta":
        return parse_table(f"delta://{tmp_path / 't'}")
    return parse_table(f"iceberg://{request.getfixturevalue('iceberg_catalog')}/ns.t")


def staged(tmp_path: Path, value: str, ids: list[int]) -> list[Path]:
    """A staged output file of a partition: ids, text and a fixed-size embedding."""
    path = tmp_path / "staged" / value / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    embedding = pa.array([[float(i), 1.0] for i in ids], pa.list_(pa.float32(), 2))
    pq.write_table(
        pa.table({"id": pa.array(ids, pa.int64()), "text": [f"t{i}" for i in ids], "e": embedding}),
        path,
    )
    return [path]


def manifest(value: str, rows: int) -> str:
    return json.dumps({"partition_column": "date", "partition": value, "rows_out": rows})


def rows_by_partition(ref: TableRef) -> dict[str, list[int]]:
    import polars as pl

    if ref.format == "delta":
        frame = pl.read_delta(ref.address)
    else:
        from pyiceberg.catalog import load_catalog

        catalog, identifier = ref.address.split("/", 1)
        frame = pl.from_arrow(load_catalog(catalog).load_table(identifier).scan().to_arrow())
    assert isinstance(frame, pl.DataFrame)
    found: dict[str, list[int]] = {}
    for date, ids in frame.group_by("date").agg(pl.col("id").sort()).iter_rows():
        found[date] = ids
    return found


def test_addresses_and_their_errors(tmp_path: Path) -> None:
    local = parse_table("delta:///data/t")
    assert (local.format, local.address, local.local) == ("delta", "/data/t", True)
    remote = parse_table("delta://s3://bucket/t", {"endpoint_url": "http://127.0.0.1:9"})
    assert (remote.address, remote.local, remote.options) == (
        "s3://bucket/t",
        False,
        (("endpoint_url", "http://127.0.0.1:9"),),
    )
    iceberg = parse_table("iceberg://prod/sales.reviews")
    assert (iceberg.format, iceberg.address) == ("iceberg", "prod/sales.reviews")
    for bad in ("iceberg://prod/reviews", "iceberg://prod", "delta://", "delta://gs://b/t"):
        with pytest.raises(StorageError, match=r"expected|local path or on s3"):
            parse_table(bad)
    with pytest.raises(StorageError, match="local paths"):
        resolve_run(str(tmp_path), "delta:///data/t", {"region": "eu-west-1"})
    _, dest = resolve_run(str(tmp_path), "delta://s3://b/t", {"region": "eu-west-1"})
    assert dest == parse_table("delta://s3://b/t", {"region": "eu-west-1"})


def test_a_missing_package_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deltalake", None)
    with pytest.raises(StorageError, match=r"pip install 'bertetl\[delta\]'"):
        count_commits(parse_table("delta:///nowhere"))


def test_each_partition_is_one_commit_that_replaces_only_it(
    table: TableRef, tmp_path: Path
) -> None:
    commit_partition(table, "date", "d1", staged(tmp_path, "a", [1, 2, 3]), manifest("d1", 3))
    commit_partition(table, "date", "d2", staged(tmp_path, "b", [4, 5]), manifest("d2", 2))
    commits = count_commits(table)
    commit_partition(table, "date", "d1", staged(tmp_path, "c", [7, 8]), manifest("d1", 2))
    assert count_commits(table) == commits + 1
    assert rows_by_partition(table) == {"d1": [7, 8], "d2": [4, 5]}

    records = commit_records(table, "date")
    assert sorted(records) == ["d1", "d2"]
    assert json.loads(records["d1"].manifest_json)["rows_out"] == 2  # the newest commit's
    assert commit_problem(records["d1"], 2) is None
    assert commit_problem(records["d2"], 2) is None
    assert commit_problem(records["d1"], 3) == "holds 2 rows, the manifest says 3"
    assert commit_records(table, "other") == {}


def test_a_partition_written_by_someone_else_no_longer_verifies(
    table: TableRef, tmp_path: Path
) -> None:
    commit_partition(table, "date", "d1", staged(tmp_path, "a", [1, 2]), manifest("d1", 2))
    commit_partition(table, "date", "d2", staged(tmp_path, "b", [3]), manifest("d2", 1))
    extra = pa.table(
        {
            "id": pa.array([9], pa.int64()),
            "text": ["x"],
            "e": pa.array([[0.0, 0.0]], pa.list_(pa.float32())),
            "date": ["d1"],
        }
    )
    if table.format == "delta":
        from deltalake import write_deltalake

        write_deltalake(table.address, extra, mode="append")
    else:
        from pyiceberg.catalog import load_catalog

        catalog, identifier = table.address.split("/", 1)
        iceberg = load_catalog(catalog).load_table(identifier)
        iceberg.append(extra.cast(iceberg.schema().as_arrow()))
    records = commit_records(table, "date")
    assert commit_problem(records["d1"], 2) is not None
    assert "changed since its commit" in (commit_problem(records["d1"], 2) or "")
    assert commit_problem(records["d2"], 1) is None


def test_a_source_table_is_listed_from_its_metadata(table: TableRef, tmp_path: Path) -> None:
    commit_partition(table, "date", "d1", staged(tmp_path, "a", [1, 2]), manifest("d1", 2))
    commit_partition(table, "date", "d2", staged(tmp_path, "b", [3]), manifest("d2", 1))
    snapshot = pin(table)
    before = {p.value: p for p in source_partitions(snapshot, "date")}
    assert {v: p.rows for v, p in before.items()} == {"d1": 2, "d2": 1}
    commit_partition(table, "date", "d2", staged(tmp_path, "c", [3]), manifest("d2", 1))
    after = {p.value: p for p in source_partitions(pin(table), "date")}
    assert after["d1"].files == before["d1"].files  # untouched: same fingerprint
    assert after["d2"].files != before["d2"].files  # rewritten: a new data file
    # the pinned snapshot still lists what it saw
    assert {p.value: p for p in source_partitions(snapshot, "date")} == before


def test_the_lock_sits_beside_the_table(table: TableRef, tmp_path: Path) -> None:
    place = lock_place(table)
    assert isinstance(place, Path)
    if table.format == "delta":
        assert place == tmp_path / "t.bertetl"
    else:
        assert place.is_relative_to(tmp_path / "warehouse" / ".bertetl-locks")
    with destination_lock(table):
        assert (place / ".bertetl.lock").exists()
