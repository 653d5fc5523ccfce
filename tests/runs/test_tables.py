"""Partitioned runs into and out of Delta Lake and Iceberg tables (a SQL catalog on SQLite with
a local warehouse), read back as a user would (polars) and compared with a local Parquet run
of the same input."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from bertetl.cli.app import app
from bertetl.config import EngineConfig
from bertetl.errors import CommitError, InputError
from bertetl.executors.local import LocalExecutor
from bertetl.io.commit import destination_lock
from bertetl.io.destinations import parse_run
from bertetl.io.stores.locations import TableRef, resolve_run
from bertetl.io.tables import count_commits
from bertetl.reports.summary import summarize
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import check_partitioned_run, enrich_partition
from tests.outputs import edit_rows

pytest.importorskip("deltalake")
pytest.importorskip("pyiceberg")

DAYS = [f"2026-01-0{d}" for d in (1, 2, 3)]
ORIGINAL = ["id", "text", "date"]


@pytest.fixture
def executor(config: EngineConfig):
    executor = LocalExecutor(config)
    executor.setup()
    yield executor
    executor.teardown()


def run_all(executor: LocalExecutor, source: object, dest: object, **options) -> dict:
    """Check, lock and plan as the flows do, then enrich every partition that needs it."""
    source, dest = resolve_run(source, dest)
    partitions = check_partitioned_run(source, dest, "date")
    with destination_lock(dest):
        plan = plan_partitions(source, dest, "date", executor.config, partitions=partitions)
        return {
            item.value: enrich_partition(executor, item, dest, plan, **options)
            for item in plan.by_action("enrich")
        }


def read_table(uri: str) -> pl.DataFrame:
    """The table as a user reads it: polars' own Delta and Iceberg readers."""
    if uri.startswith("delta://"):
        return pl.read_delta(uri.removeprefix("delta://"))
    from pyiceberg.catalog import load_catalog

    catalog, identifier = uri.removeprefix("iceberg://").split("/", 1)
    os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")
    return pl.scan_iceberg(load_catalog(catalog).load_table(identifier)).collect()


def read_parquet(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(folder / "**" / "*.parquet", hive_partitioning=True)


def assert_same_rows(actual: pl.DataFrame, expected: pl.DataFrame, table: bool = True) -> None:
    """Same rows (by date and id), same original columns and labels, embeddings with cosine
    >= 0.9999 (a list<float32> in a `table`)."""
    keys = ["date", "id"]
    actual = actual.with_columns(pl.col("date").cast(pl.String)).sort(keys)
    expected = expected.with_columns(pl.col("date").cast(pl.String)).sort(keys)
    assert actual.height == expected.height
    for name in [*ORIGINAL, "label", "enrich_error"]:
        assert actual[name].to_list() == expected[name].to_list(), name
    if table:
        assert actual.schema["embedding"] == pl.List(pl.Float32)
    got, want = actual["embedding"].to_list(), expected["embedding"].to_list()
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            a, b = np.asarray(a), np.asarray(b)
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.9999
    assert np.allclose(
        actual["score"].fill_null(0).to_numpy(), expected["score"].fill_null(0).to_numpy(), 1e-5
    )


def test_backfill_into_a_table_then_incremental_commits_only_the_edit(
    executor, partitioned_source: Callable[..., Path], table_uri: str, tmp_path: Path
) -> None:
    src = partitioned_source(days=3)
    manifests = run_all(executor, src, table_uri)
    assert sorted(manifests) == DAYS
    assert all(m.rows_out == 24 and m.rows_inferred == 22 for m in manifests.values())
    run_all(executor, src, tmp_path / "reference")
    assert_same_rows(read_table(table_uri), read_parquet(tmp_path / "reference"))

    commits = count_commits(resolve_run(src, table_uri)[1])
    assert run_all(executor, src, table_uri) == {}  # nothing changed: no commit
    assert count_commits(resolve_run(src, table_uri)[1]) == commits

    edit_rows(src / "date=2026-01-02" / "part-0.parquet", [0, 5, 20])
    manifests = run_all(executor, src, table_uri)
    assert list(manifests) == ["2026-01-02"]
    edited = manifests["2026-01-02"]
    assert (edited.rows_inferred, edited.rows_reused, edited.rows_failed) == (3, 19, 2)
    assert count_commits(resolve_run(src, table_uri)[1]) == commits + 1
    run_all(executor, src, tmp_path / "reference")
    assert_same_rows(read_table(table_uri), read_parquet(tmp_path / "reference"))

    plan = plan_partitions(src, resolve_run(src, table_uri)[1], "date", executor.config)
    assert {(p.action, p.reason) for p in plan.partitions} == {("skip", "unchanged")}
    assert plan.partitions[1].previous == edited  # the manifest, read from the table alone

    # `bertetl summary` of the table: the accounting and labels of the same run into folders
    ours = summarize(resolve_run(src, table_uri)[1], "date")
    theirs = summarize(tmp_path / "reference", "date")
    assert set(ours) == {"rows", "label_counts"}
    assert ours["rows"].equals(theirs["rows"])
    assert ours["label_counts"].equals(theirs["label_counts"])
    shown = CliRunner().invoke(app, ["summary", table_uri, "--partition-column", "date"])
    assert shown.exit_code == 0, shown.output
    assert "label_counts:" in shown.stdout and "2026-01-03" in shown.stdout


def test_a_table_source_is_read_from_one_version_and_skipped_from_metadata(
    executor, partitioned_source: Callable[..., Path], tmp_path: Path, monkeypatch
) -> None:
    from deltalake import write_deltalake

    src = partitioned_source(days=3)
    source_uri = f"delta://{tmp_path / 'source'}"
    write_deltalake(tmp_path / "source", read_parquet(src).to_arrow(), partition_by=["date"])
    manifests = run_all(executor, source_uri, tmp_path / "out", reuse=True)
    assert sorted(manifests) == DAYS
    run_all(executor, src, tmp_path / "reference")
    expected = read_parquet(tmp_path / "reference")
    assert_same_rows(read_parquet(tmp_path / "out"), expected, table=False)

    import bertetl.io.tables as tables

    def no_reading(*args, **kwargs):
        raise AssertionError("an unchanged partition was read")

    materialize = tables.materialize
    monkeypatch.setattr(tables, "materialize", no_reading)
    assert run_all(executor, source_uri, tmp_path / "out") == {}
    monkeypatch.setattr(tables, "materialize", materialize)

    day = read_parquet(src).filter(pl.col("date").cast(pl.String) == DAYS[2]).to_arrow()
    edited = day.set_column(1, "text", pa.array(["changed", *day.column("text").to_pylist()[1:]]))
    write_deltalake(tmp_path / "source", edited, mode="overwrite", predicate="date = '2026-01-03'")
    manifests = run_all(executor, source_uri, tmp_path / "out")
    assert list(manifests) == ["2026-01-03"]
    assert (manifests["2026-01-03"].rows_inferred, manifests["2026-01-03"].rows_reused) == (1, 21)


@pytest.mark.parametrize("source_format", ["delta", "iceberg"])
def test_null_and_empty_partition_values_of_a_table_source_are_a_partition_like_any_other(
    executor, source_format: str, iceberg_catalog: str, tmp_path: Path
) -> None:
    """Rows whose partition value is null (or, in Delta, empty) are read, enriched and
    committed as the partition `__HIVE_DEFAULT_PARTITION__` (Hive's spelling, as Spark and
    Delta name it), counted in `rows_in`, and a rerun finds them unchanged (they were read as
    zero rows and never reached DEST)."""
    days = ["2026-01-01", None, "2026-01-02", None, ""] * 6
    rows = pa.table(
        {
            "id": pa.array(range(len(days)), pa.int64()),
            "text": [f"row {i} of the day {d}" for i, d in enumerate(days)],
            "date": pa.array(days, pa.string()),
        }
    )
    if source_format == "delta":
        from deltalake import write_deltalake

        write_deltalake(tmp_path / "source", rows, partition_by=["date"])
        source_uri = f"delta://{tmp_path / 'source'}"
        nulls = 18  # Delta stores an empty partition value as null
    else:
        from pyiceberg.catalog import load_catalog

        catalog = load_catalog(iceberg_catalog)
        catalog.create_namespace_if_not_exists("src")
        table = catalog.create_table("src.rows", schema=rows.schema)
        with table.update_spec() as spec:
            spec.add_identity("date")
        table.append(rows)
        source_uri = f"iceberg://{iceberg_catalog}/src.rows"
        nulls = 12
    manifests = run_all(executor, source_uri, tmp_path / "out")
    null = "__HIVE_DEFAULT_PARTITION__"
    assert manifests[null].rows_in == manifests[null].rows_out == nulls
    assert sum(m.rows_out for m in manifests.values()) == rows.num_rows  # every row, once
    written = pl.read_parquet(tmp_path / "out" / f"date={null}" / "**" / "*.parquet")
    expected = {i for i, d in enumerate(days) if d is None or (d == "" and nulls == 18)}
    assert set(written["id"].to_list()) == expected
    assert run_all(executor, source_uri, tmp_path / "out") == {}  # unchanged: nothing to do


def test_partition_values_that_cannot_be_folder_names_are_escaped_and_read_back(
    executor, tmp_path: Path
) -> None:
    """A table SOURCE's partition value holding `/`, `=`, `%`, `:` or a control character is
    one folder under DEST, percent-escaped as Hive does (not a nested folder that readers
    parse as another value), and reads back as the same value."""
    from deltalake import write_deltalake

    from bertetl.io.read import discover

    values = ["a/b", "x=y", "50%", "10:30", "tab\there", "ünï 日本"]
    days = values * 4
    rows = pa.table(
        {
            "id": pa.array(range(len(days)), pa.int64()),
            "text": [f"row {i}" for i in range(len(days))],
            "date": pa.array(days, pa.string()),
        }
    )
    write_deltalake(tmp_path / "source", rows, partition_by=["date"])
    source_uri = f"delta://{tmp_path / 'source'}"
    manifests = run_all(executor, source_uri, tmp_path / "out")
    assert sorted(manifests) == sorted(values)
    folders = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert len(folders) == len(values)  # one folder per value, none nested
    read_back = {}
    for file in discover(tmp_path / "out"):
        read_back.setdefault(file.partition["date"], 0)
        read_back[file.partition["date"]] += pl.read_parquet(file.path).height
    assert read_back == dict.fromkeys(values, 4)
    assert run_all(executor, source_uri, tmp_path / "out") == {}


def test_a_null_partition_commits_as_null_into_a_table_dest(
    executor, table_uri: str, tmp_path: Path
) -> None:
    """A SOURCE folder `date=__HIVE_DEFAULT_PARTITION__` is the null partition: committed
    into a table DEST as null values (read back as nulls by polars), replaced by a rerun."""
    folder = tmp_path / "src" / "date=__HIVE_DEFAULT_PARTITION__"
    folder.mkdir(parents=True)
    texts = [f"text number {i}" for i in range(10)]
    pq_table = pa.table({"id": list(range(10)), "text": texts})
    import pyarrow.parquet as pq

    pq.write_table(pq_table, folder / "part-0.parquet")
    manifests = run_all(executor, tmp_path / "src", table_uri)
    assert manifests["__HIVE_DEFAULT_PARTITION__"].rows_out == 10
    rows = read_table(table_uri)
    assert rows.height == 10 and rows["date"].null_count() == 10
    run_all(executor, tmp_path / "src", table_uri)
    assert run_all(executor, tmp_path / "src", table_uri) == {}
    assert read_table(table_uri).height == 10


def test_a_backfill_range_from_a_delta_source_into_an_iceberg_table(
    executor, partitioned_source, iceberg_catalog: str, tmp_path: Path
) -> None:
    from deltalake import write_deltalake

    src = partitioned_source(days=3)
    write_deltalake(tmp_path / "source", read_parquet(src).to_arrow(), partition_by=["date"])
    source, dest = resolve_run(f"delta://{tmp_path / 'source'}", f"iceberg://{iceberg_catalog}/a.b")
    partitions = check_partitioned_run(source, dest, "date", "2026-01-02", "2026-01-03")
    assert [p.value for p in partitions] == DAYS[1:]
    plan = plan_partitions(source, dest, "date", executor.config, partitions=partitions)
    for item in plan.by_action("enrich"):
        enrich_partition(executor, item, dest, plan)
    run_all(executor, src, tmp_path / "reference")
    expected = read_parquet(tmp_path / "reference").filter(
        pl.col("date").cast(pl.String) != DAYS[0]
    )
    assert_same_rows(read_table(str(dest)), expected)


def test_a_bad_file_fails_only_its_partition(executor, partitioned_source, tmp_path: Path) -> None:
    src = partitioned_source(days=3)
    (src / "date=2026-01-02" / "part-0.parquet").write_bytes(b"not parquet")
    source, dest = resolve_run(src, f"delta://{tmp_path / 't'}")
    plan = plan_partitions(source, dest, "date", executor.config)
    committed, failed = [], []
    for item in plan.by_action("enrich"):
        try:
            enrich_partition(executor, item, dest, plan)
            committed.append(item.value)
        except InputError:
            failed.append(item.value)
    assert (committed, failed) == ([DAYS[0], DAYS[2]], [DAYS[1]])
    assert sorted(read_table(str(dest))["date"].unique().to_list()) == [DAYS[0], DAYS[2]]


def test_a_crash_between_partitions_then_a_rerun_loses_and_doubles_nothing(
    executor, partitioned_source, table_uri: str, monkeypatch
) -> None:
    import bertetl.io.tables as tables

    src = partitioned_source(days=3)
    commit = tables.commit_partition
    done: list[str] = []

    def crash_after_one(ref, column, value, files, manifest_json):
        if done:
            raise KeyboardInterrupt("killed between partitions")
        commit(ref, column, value, files, manifest_json)
        done.append(value)

    monkeypatch.setattr(tables, "commit_partition", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_all(executor, src, table_uri)
    monkeypatch.setattr(tables, "commit_partition", commit)
    assert read_table(table_uri)["date"].unique().to_list() == done

    assert sorted(run_all(executor, src, table_uri)) == DAYS[1:]
    rows = read_table(table_uri).with_columns(pl.col("date").cast(pl.String))
    counts = rows.group_by("date", "id").len()
    assert counts.height == 3 * 24 and counts["len"].max() == 1


@pytest.mark.parametrize("kind", ["delta", "iceberg"])
def test_a_table_bertetl_did_not_write_is_refused_and_kept(
    executor, partitioned_source, kind: str, iceberg_catalog: str, tmp_path: Path
) -> None:
    """A user's own table as DEST (rows, no bertetl commit) is refused by name, by backfill and
    by enrich, before any model work, and is left as it was (it was overwritten, with a new
    schema, its rows kept only in its history)."""
    src = partitioned_source(days=1)
    theirs = pa.table({"order_id": [1, 2, 3], "amount": [9.5, 3.0, 7.25]})
    if kind == "delta":
        from deltalake import write_deltalake

        write_deltalake(tmp_path / "theirs", theirs)
        uri = f"delta://{tmp_path / 'theirs'}"
    else:
        from pyiceberg.catalog import load_catalog

        catalog = load_catalog(iceberg_catalog)
        catalog.create_namespace_if_not_exists("sales")
        catalog.create_table("sales.orders", schema=theirs.schema).append(theirs)
        uri = f"iceberg://{iceberg_catalog}/sales.orders"
    commits = count_commits(resolve_run(src, uri)[1])
    with pytest.raises(InputError, match=r"is a table bertetl did not write"):
        run_all(executor, src, uri)
    result = CliRunner().invoke(
        app, ["enrich", str(src), uri, "--text-column", "text", "--embed-model", "x"]
    )
    assert result.exit_code != 0 and "is a table bertetl did not write" in result.output
    assert count_commits(resolve_run(src, uri)[1]) == commits
    assert read_table(uri).sort("order_id").to_arrow().equals(theirs)
    source, dest = parse_run(src, uri, overwrite_foreign=True)  # the user knows
    assert check_partitioned_run(source, dest, "date")
    result = CliRunner().invoke(
        app,
        ["enrich", str(src), uri, "--text-column", "text", "--overwrite-foreign",
         "--embed-model", executor.config.embed_model],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_table(uri).height == 24 and "order_id" not in read_table(uri).columns


def test_a_new_source_column_evolves_the_table_dest(
    executor, partitioned_source, table_uri: str, tmp_path: Path
) -> None:
    """A column added to SOURCE after the table was made is added to the table by the next
    partition's commit (Delta's schema merge, Iceberg's union by name), null in the rows
    before it; a later partition without it commits too. The commit failed after all the
    model work, and left an Iceberg DEST stuck even with --force."""
    import pyarrow.parquet as pq

    src = partitioned_source(days=3)
    for day in ("2026-01-02", "2026-01-03"):
        (src / f"date={day}" / "part-0.parquet").rename(tmp_path / f"{day}.parquet")
        (src / f"date={day}").rmdir()
    run_all(executor, src, table_uri)
    added = pq.read_table(tmp_path / "2026-01-02.parquet")
    added = added.append_column("region", pa.array(["north"] * added.num_rows))
    (src / "date=2026-01-02").mkdir()
    pq.write_table(added, src / "date=2026-01-02" / "part-0.parquet")
    assert list(run_all(executor, src, table_uri)) == ["2026-01-02"]
    (src / "date=2026-01-03").mkdir()  # a partition without the new column, after it
    (tmp_path / "2026-01-03.parquet").rename(src / "date=2026-01-03" / "part-0.parquet")
    edit_rows(src / "date=2026-01-01" / "part-0.parquet", [0])
    assert sorted(run_all(executor, src, table_uri)) == ["2026-01-01", "2026-01-03"]
    rows = read_table(table_uri).with_columns(pl.col("date").cast(pl.String))
    by_day = rows.group_by("date").agg(pl.col("region").drop_nulls().unique())
    assert dict(by_day.iter_rows()) == {
        "2026-01-01": [],
        "2026-01-02": ["north"],
        "2026-01-03": [],
    }
    assert rows.height == 3 * 24 and run_all(executor, src, table_uri) == {}


def test_table_edges_from_a_hostile_review(executor, partitioned_source, tmp_path: Path) -> None:
    """A local Delta DEST inside another run's folder DEST is refused (readers of the folder
    saw its rows twice); one table reached through a link has one lock; `delta://` on a file
    is one line; `summary` of a table bertetl never wrote is an error, not an empty exit 0."""
    from deltalake import write_deltalake

    src = partitioned_source(days=1)
    run_all(executor, src, tmp_path / "out")
    with pytest.raises(InputError, match="lies inside another run's DEST"):
        check_partitioned_run(*resolve_run(src, f"delta://{tmp_path / 'out' / 't'}"), "date")
    run_all(executor, src, f"delta://{tmp_path / 'dd'}")
    (tmp_path / "ddlink").symlink_to(tmp_path / "dd")
    _, linked = resolve_run(src, f"delta://{tmp_path / 'ddlink'}")
    _, real = resolve_run(src, f"delta://{tmp_path / 'dd'}")
    with destination_lock(real), pytest.raises(CommitError, match="another bertetl run"):
        destination_lock(linked).acquire()
    (tmp_path / "stray.parquet").write_bytes(b"PAR1 not a table")
    result = CliRunner().invoke(
        app, ["summary", f"delta://{tmp_path / 'stray.parquet'}", "--partition-column", "date"]
    )
    assert result.exit_code == 1 and "as a Delta table" in result.output
    assert "Traceback" not in result.output
    write_deltalake(tmp_path / "theirs", pa.table({"date": ["x"], "n": [1]}), partition_by=["date"])
    result = CliRunner().invoke(
        app, ["summary", f"delta://{tmp_path / 'theirs'}", "--partition-column", "date"]
    )
    assert result.exit_code == 1 and "holds no commit of bertetl's" in result.output


def test_one_run_per_table_and_no_table_is_its_own_dest(partitioned_source, tmp_path: Path) -> None:
    src = partitioned_source(days=1)
    _, dest = resolve_run(src, f"delta://{tmp_path / 't'}")
    with destination_lock(dest):
        assert (tmp_path / "t.bertetl" / ".bertetl.lock").exists()  # in the sidecar folder
        with pytest.raises(CommitError, match="another bertetl run"):
            destination_lock(dest).acquire()
    same = TableRef("delta", f"delta://{tmp_path / 't'}", str(tmp_path / "t"))
    with pytest.raises(InputError, match="its own input"):
        check_partitioned_run(same, same, "date")
    with pytest.raises(InputError, match="its own input"):
        check_partitioned_run(src, TableRef("delta", "delta://x", str(src / "t")), "date")
