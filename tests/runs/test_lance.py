"""`bertetl enrich`, `backfill` and `incremental` into and out of Lance datasets, read back as a
user would (`lance.dataset(...).to_table()`) and compared with a local Parquet run of the same
input; one Lance version per commit, none for a rerun with nothing to do."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from bertetl.cli.app import app
from bertetl.config import EngineConfig
from bertetl.io.stores.locations import resolve_run
from bertetl.io.tables import MANIFEST_KEY, count_commits
from bertetl.runs.enrich import enrich
from tests.outputs import edit_rows
from tests.runs.test_tables import DAYS, assert_same_rows, read_parquet, run_all

lance = pytest.importorskip("lance")


@pytest.fixture
def executor(config: EngineConfig):
    from bertetl.executors.local import LocalExecutor

    executor = LocalExecutor(config)
    executor.setup()
    yield executor
    executor.teardown()


def read_lance(uri: str) -> pl.DataFrame:
    """The dataset as a user reads it: pylance's own reader."""
    return pl.from_arrow(lance.dataset(uri.removeprefix("lance://")).to_table())  # type: ignore[return-value]


def test_enrich_into_lance_is_one_version_per_run_and_searchable(
    config: EngineConfig, write_table, tmp_path: Path
) -> None:
    for part in range(2):
        texts = [f"review {part}-{i} was good and fun {i * i}" for i in range(12)]
        write_table(
            {"id": [part * 100 + i for i in range(12)], "text": texts}, f"src/{part}.parquet"
        )
    source, uri = tmp_path / "src", f"lance://{tmp_path / 'enriched.lance'}"
    enrich(source, tmp_path / "local", config)
    expected = pl.read_parquet(tmp_path / "local" / "*.parquet").sort("id")

    enrich(source, uri, config)
    first = read_lance(uri).sort("id")
    assert first["id"].to_list() == expected["id"].to_list()
    assert first["label"].to_list() == expected["label"].to_list()
    assert first["embedding"].to_list() == expected["embedding"].to_list()
    dataset = lance.dataset(str(tmp_path / "enriched.lance"))
    assert pa.types.is_fixed_size_list(dataset.schema.field("embedding").type)  # indexable
    ref = resolve_run(source, uri)[1]
    versions = count_commits(ref)

    enrich(source, uri, config)  # a rerun replaces the rows in one version: none doubled
    assert read_lance(uri).height == 24 and count_commits(ref) == versions + 1
    (transaction,) = lance.dataset(str(tmp_path / "enriched.lance")).get_transactions(1)
    record = json.loads(transaction.transaction_properties[MANIFEST_KEY])
    assert record["run"] == "enrich" and record["rows"] == 24

    # the query a user runs: a row's own embedding finds that row (at distance 0; the tiny
    # model's vocabulary makes some texts one, so rows that tie with it are as near)
    vectors = np.stack(first["embedding"].to_list()).astype(np.float32)
    for row in (0, 7, 23):
        hits = dataset.to_table(
            columns=["id", "_distance"],
            nearest={"column": "embedding", "q": vectors[row], "k": 24},
        )
        nearest = hits.filter(pc.less_equal(hits["_distance"], 1e-6))
        assert first["id"][row] in nearest["id"].to_pylist()
        assert all(
            np.array_equal(vectors[row], vectors[first["id"].to_list().index(i)])
            for i in nearest["id"].to_pylist()
        )


def test_backfill_into_lance_then_incremental_commits_only_the_edit(
    executor, partitioned_source: Callable[..., Path], tmp_path: Path
) -> None:
    src, uri = partitioned_source(days=3), f"lance://{tmp_path / 'enriched'}"
    manifests = run_all(executor, src, uri)
    assert sorted(manifests) == DAYS
    run_all(executor, src, tmp_path / "reference")
    assert_same_rows(read_lance(uri), read_parquet(tmp_path / "reference"), table=False)
    ref = resolve_run(src, uri)[1]
    versions = count_commits(ref)
    assert versions == 3  # one version per partition

    assert run_all(executor, src, uri) == {}  # nothing changed: no new version
    assert count_commits(ref) == versions

    edit_rows(src / "date=2026-01-02" / "part-0.parquet", [0, 5, 20])
    manifests = run_all(executor, src, uri)
    assert list(manifests) == ["2026-01-02"]
    edited = manifests["2026-01-02"]
    assert (edited.rows_inferred, edited.rows_reused, edited.rows_failed) == (3, 19, 2)
    assert count_commits(ref) == versions + 1
    run_all(executor, src, tmp_path / "reference")
    assert_same_rows(read_lance(uri), read_parquet(tmp_path / "reference"), table=False)


def test_a_lance_source_is_enriched_like_its_parquet(
    executor, partitioned_source: Callable[..., Path], tmp_path: Path
) -> None:
    src = partitioned_source(days=3)
    rows = read_parquet(src).with_columns(pl.col("date").cast(pl.String)).to_arrow()
    lance.write_dataset(rows, str(tmp_path / "source"))
    source_uri = f"lance://{tmp_path / 'source'}"
    assert sorted(run_all(executor, source_uri, tmp_path / "out")) == DAYS
    run_all(executor, src, tmp_path / "reference")
    assert_same_rows(read_parquet(tmp_path / "out"), read_parquet(tmp_path / "reference"), False)
    assert run_all(executor, source_uri, tmp_path / "out") == {}  # unchanged: skipped


@pytest.mark.slow  # two Prefect runs
def test_cli_incremental_into_lance_builds_and_keeps_the_index(
    tiny_embed_dir: Path, partitioned_source: Callable[..., Path], tmp_path: Path
) -> None:
    src, dataset = partitioned_source(days=2, rows=40), tmp_path / "enriched"
    args = ["incremental", str(src), f"lance://{dataset}", "--partition-column", "date"]
    args += ["--text-column", "text", "--embed-model", str(tiny_embed_dir)]
    args += ["--index", "ivf_hnsw_sq", "--index-param", "num_partitions=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    indexes = lance.dataset(str(dataset)).list_indices()  # one index, in segments
    assert {(i["name"], tuple(i["fields"])) for i in indexes} == {("embedding_idx", ("embedding",))}

    edit_rows(src / "date=2026-01-02" / "part-0.parquet", [0, 5])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stats = lance.dataset(str(dataset)).stats.index_stats("embedding_idx")
    assert stats["num_unindexed_rows"] == 0  # the new rows were added to it

    refused = CliRunner().invoke(app, [*args[:-4], "--index", "hnsw"])
    assert refused.exit_code != 0 and "builds ivf_pq, ivf_hnsw_sq" in refused.output
