"""`bertetl enrich` into and out of Delta Lake and Iceberg tables, read back as a user would
(polars) and compared with a local Parquet run of the same input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from bertetl.cli.app import app
from bertetl.config import EngineConfig
from bertetl.errors import FilesFailedError, InputError
from bertetl.io.stores.locations import resolve_run
from bertetl.io.tables import MANIFEST_KEY, count_commits
from bertetl.runs.enrich import enrich
from tests.runs.test_tables import assert_same_rows, read_parquet, read_table

pytest.importorskip("deltalake")
pytest.importorskip("pyiceberg")


@pytest.fixture
def source(write_table, tmp_path: Path) -> Path:
    """Two files of reviews, a null and a blank among them."""
    for part, rows in ((0, 9), (1, 6)):
        texts: list[str | None] = [f"review {part}-{i} was good and fun" for i in range(rows)]
        texts[2] = None if part == 0 else "  "
        write_table(
            {"id": [part * 100 + i for i in range(rows)], "text": texts},
            f"src/part-{part}.parquet",
        )
    return tmp_path / "src"


def _same_rows(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Same rows by id, same original columns, labels and embeddings (list<float32> in a
    table, exactly the floats the Parquet run wrote)."""
    actual, expected = actual.sort("id"), expected.sort("id")
    assert actual.height == expected.height
    for name in ["id", "text", "label", "score", "enrich_error"]:
        assert actual[name].to_list() == expected[name].to_list(), name
    assert actual["embedding"].to_list() == expected["embedding"].to_list()


def test_enrich_replaces_a_table_in_one_commit_and_a_rerun_doubles_nothing(
    config: EngineConfig, source: Path, table_uri: str, tmp_path: Path
) -> None:
    enrich(source, tmp_path / "local", config)
    expected = pl.read_parquet(tmp_path / "local" / "*.parquet")

    report = enrich(source, table_uri, config)
    assert {f.dest for f in report.files} == {table_uri}
    first = read_table(table_uri)
    _same_rows(first, expected)
    assert first.schema["embedding"] == pl.List(pl.Float32)
    ref = resolve_run(source, table_uri)[1]
    commits = count_commits(ref)

    enrich(source, table_uri, config)  # a rerun replaces the rows: none doubled
    _same_rows(read_table(table_uri), expected)
    assert count_commits(ref) == commits + 1  # one transaction per run

    record = json.loads(_last_record(table_uri))
    assert record["run"] == "enrich" and record["rows"] == 15
    assert record["source"] == str(source) and len(record["config_hash"]) == 64


def _last_record(uri: str) -> str:
    """The run's record in the table's newest commit metadata."""
    if uri.startswith("delta://"):
        from deltalake import DeltaTable

        return DeltaTable(uri.removeprefix("delta://")).history(1)[0][MANIFEST_KEY]
    from pyiceberg.catalog import load_catalog

    catalog, identifier = uri.removeprefix("iceberg://").split("/", 1)
    snapshot = load_catalog(catalog).load_table(identifier).current_snapshot()
    return snapshot.summary[MANIFEST_KEY]


def test_a_table_source_is_enriched_like_its_parquet(
    config: EngineConfig, source: Path, table_uri: str, tmp_path: Path
) -> None:
    """A table as SOURCE (here one enrich wrote, its new columns dropped by the text-only
    run's own output names: read with a prefix), to a Parquet DEST and to another table."""
    enrich(source, tmp_path / "local", config)
    expected = pl.read_parquet(tmp_path / "local" / "*.parquet")
    originals = EngineConfig(text_column="text", embed_model=config.embed_model)
    enrich(source, table_uri, originals)

    prefixed = config.model_copy(update={"prefix": "again_"})
    out = tmp_path / "from-table"
    report = enrich(table_uri, out, prefixed)
    assert [f.source for f in report.files] == [table_uri]
    again = pl.read_parquet(out / "*.parquet").sort("id")
    assert again.height == 15
    assert again["text"].to_list() == expected.sort("id")["text"].to_list()
    assert again["again_embedding"].to_list() == expected.sort("id")["embedding"].to_list()
    assert again["again_label"].to_list() == expected.sort("id")["label"].to_list()

    other = f"delta://{tmp_path / 'copy'}"
    enrich(table_uri, other, prefixed)
    assert read_table(other).sort("id")["again_label"].to_list() == again["again_label"].to_list()


def test_a_failed_file_commits_nothing(
    config: EngineConfig, source: Path, table_uri: str, tmp_path: Path
) -> None:
    enrich(source, table_uri, config)
    before = read_table(table_uri)
    ref = resolve_run(source, table_uri)[1]
    commits = count_commits(ref)
    (source / "part-2.parquet").write_bytes(b"PAR1 not parquet PAR1")

    with pytest.raises(FilesFailedError, match="was left as it was") as failed:
        enrich(source, table_uri, config)
    assert list(failed.value.failures) == [str(source / "part-2.parquet")]
    assert count_commits(ref) == commits
    assert read_table(table_uri).sort("id").equals(before.sort("id"))


def test_partitioned_or_own_tables_are_refused(
    config: EngineConfig, source: Path, tmp_path: Path
) -> None:
    import deltalake

    partitioned = tmp_path / "by-day"
    deltalake.write_deltalake(
        partitioned, pa.table({"id": [1], "text": ["a"], "day": ["d1"]}), partition_by=["day"]
    )
    with pytest.raises(InputError, match="backfill --partition-column day"):
        enrich(source, f"delta://{partitioned}", config)
    with pytest.raises(InputError, match="one table"):
        enrich(f"delta://{partitioned}", f"delta://{partitioned}", config)
    assert deltalake.DeltaTable(partitioned).version() == 0  # untouched


def test_cli_enrich_into_a_delta_table(tiny_embed_dir: Path, source: Path, tmp_path: Path) -> None:
    uri = f"delta://{tmp_path / 't'}"
    args = ["enrich", str(source), uri, "--text-column", "text"]
    result = CliRunner().invoke(app, [*args, "--embed-model", str(tiny_embed_dir)])
    assert result.exit_code == 0, result.output
    assert "enriched 15 rows" in result.output
    assert read_table(uri).height == 15


def test_hive_folders_become_the_tables_columns(
    config: EngineConfig, partitioned_source, table_uri: str, tmp_path: Path
) -> None:
    """A hive-partitioned folder into a table: each row keeps its folder's `date`, as a
    reader of the folder sees it, and equals the Parquet run read that way."""
    src = partitioned_source(days=2)
    enrich(src, tmp_path / "local", config)
    expected = read_parquet(tmp_path / "local")
    enrich(src, table_uri, config)
    assert_same_rows(read_table(table_uri), expected)


def test_every_committed_file_reaches_the_table_and_old_columns_go(
    tiny_embed_dir: Path, config: EngineConfig, write_table, table_uri: str, tmp_path: Path
) -> None:
    """Files of any name (Hive writes `000000_0`) and hive values kept as strings (`007`);
    a rerun with fewer heads leaves the table with this run's columns only, in both formats."""
    write_table({"id": [1, 2], "text": ["good", "bad"]}, "src/region=007/a.parquet")
    write_table({"id": [3, 4, 5], "text": ["x", "y", "z"]}, "src/region=007/000000_0")
    source = tmp_path / "src"
    enrich(source, table_uri, config)
    table = read_table(table_uri).sort("id")
    assert table["id"].to_list() == [1, 2, 3, 4, 5]
    assert table["region"].to_list() == ["007"] * 5
    assert "label" in table.columns

    embed_only = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    enrich(source, table_uri, embed_only)
    again = read_table(table_uri)
    assert again.height == 5
    assert not {"label", "score"} & set(again.columns)


def test_a_big_table_source_is_staged_as_several_jobs(
    config: EngineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past STAGED_FILE_ROWS rows a table SOURCE is staged in several files (one job each,
    for --workers): every row once, in the order the table gives them."""
    import deltalake

    monkeypatch.setattr("bertetl.runs.enrich_tables.STAGED_FILE_ROWS", 4)
    for part in range(3):  # three data files: three batches
        rows = pa.table(
            {"id": [part * 5 + i for i in range(5)], "text": [f"t {part} {i}" for i in range(5)]}
        )
        deltalake.write_deltalake(tmp_path / "t", rows, mode="append")
    report = enrich(f"delta://{tmp_path / 't'}", tmp_path / "out", config)
    outputs = sorted((tmp_path / "out").glob("*.parquet"))
    assert len(outputs) == len(report.files) == 3
    assert [f.source for f in report.files] == [f"delta://{tmp_path / 't'}"] * 3
    ids = pl.read_parquet(tmp_path / "out" / "*.parquet")["id"].to_list()
    assert sorted(ids) == list(range(15))
