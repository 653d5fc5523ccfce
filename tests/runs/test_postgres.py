"""`bertetl backfill` and `incremental` into a PostgreSQL table with pgvector (a real server,
started by the test fixture), read back with psycopg and compared with a local Parquet run of
the same input; one transaction per partition, none for a rerun with nothing to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from bertetl.cli.app import app
from bertetl.io.destinations import parse_destination
from tests.outputs import edit_rows
from tests.runs.test_tables import DAYS, assert_same_rows, read_parquet
from tests.runs.test_tables import run_all as run_into_folder

pytest.importorskip("psycopg")


@pytest.fixture
def executor(config):
    from bertetl.executors.local import LocalExecutor

    executor = LocalExecutor(config)
    executor.setup()
    yield executor
    executor.teardown()


def run_all(executor, source: object, dest: object) -> dict:
    """As `tests.runs.test_tables.run_all`, through the destination's own lock (the flows'
    way: a PostgreSQL table's lock is an advisory lock, not a place on a filesystem)."""
    from bertetl.io.destinations import parse_run
    from bertetl.runs.plan import plan_partitions
    from bertetl.runs.staged import check_partitioned_run, enrich_partition

    if not str(dest).startswith("postgresql://"):
        return run_into_folder(executor, source, dest)
    source, destination = parse_run(source, dest)
    partitions = check_partitioned_run(source, destination, "date")
    with destination.lock():
        plan = plan_partitions(source, destination, "date", executor.config, partitions=partitions)
        return {
            item.value: enrich_partition(executor, item, destination, plan)
            for item in plan.by_action("enrich")
        }


def read_postgres(uri: str, sql: str = "SELECT * FROM {table}") -> pl.DataFrame:
    """The table as a user reads it: psycopg, pgvector's types, into polars."""
    import psycopg
    from pgvector.psycopg import register_vector

    place = parse_destination(uri).place
    with psycopg.connect(place.conninfo) as connection:
        register_vector(connection)
        cursor = connection.execute(sql.format(table=place.qualified))
        names = [c.name for c in cursor.description]
        rows = cursor.fetchall()
    columns = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    if "embedding" in columns:
        columns["embedding"] = [None if v is None else v.to_list() for v in columns["embedding"]]
    return pl.DataFrame(columns, strict=False)


def test_backfill_into_postgres_then_incremental_commits_only_the_edit(
    executor, partitioned_source: Callable[..., Path], postgres_dest: str, tmp_path: Path
) -> None:
    src = partitioned_source(days=3)
    manifests = run_all(executor, src, postgres_dest)
    assert sorted(manifests) == DAYS
    run_all(executor, src, tmp_path / "reference")
    assert_same_rows(read_postgres(postgres_dest), read_parquet(tmp_path / "reference"), False)
    mine = "SELECT * FROM bertetl_runs WHERE table_name = '" + postgres_dest.rsplit(".", 1)[1] + "'"
    runs = read_postgres(postgres_dest, mine).height
    assert runs == 3  # one transaction (and record) per partition

    assert run_all(executor, src, postgres_dest) == {}  # nothing changed: nothing committed
    assert read_postgres(postgres_dest, mine).height == runs

    edit_rows(src / "date=2026-01-02" / "part-0.parquet", [0, 5, 20])
    manifests = run_all(executor, src, postgres_dest)
    assert list(manifests) == ["2026-01-02"]
    edited = manifests["2026-01-02"]
    assert (edited.rows_inferred, edited.rows_reused, edited.rows_failed) == (3, 19, 2)
    run_all(executor, src, tmp_path / "reference")
    assert_same_rows(read_postgres(postgres_dest), read_parquet(tmp_path / "reference"), False)


@pytest.mark.slow  # a Prefect run
def test_cli_backfill_into_postgres_with_an_hnsw_index(
    tiny_embed_dir: Path, partitioned_source: Callable[..., Path], postgres_dest: str
) -> None:
    src = partitioned_source(days=2, rows=10)
    args = ["backfill", str(src), postgres_dest, "--partition-column", "date"]
    args += ["--text-column", "text", "--embed-model", str(tiny_embed_dir), "--index", "hnsw"]
    result = CliRunner().invoke(app, [*args, "--index-param", "m=8"])
    assert result.exit_code == 0, result.output
    table = parse_destination(postgres_dest).place.table
    (index,) = read_postgres(
        postgres_dest, f"SELECT indexdef FROM pg_indexes WHERE tablename = '{table}'"
    )["indexdef"].to_list()
    assert "hnsw (embedding vector_cosine_ops)" in index and "m='8'" in index
