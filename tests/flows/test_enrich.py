"""The analyst enrich flow: chunked big files assemble into the engine's exact output."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import PartitionsFailedError
from bertetl.flows.enrich import enrich_flow
from bertetl.flows.params import EnrichParams, RunOptions
from bertetl.runs.enrich import enrich
from tests.conftest import partition_texts
from tests.outputs import assert_same_output, staging_is_empty

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_row_group_chunks_give_the_engines_output(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    texts = partition_texts(1, 95)
    big = pa.table({"id": list(range(95)), "text": texts})
    write_table(big, "src/big.parquet", row_group_size=10)  # 10 row groups
    write_table(big.slice(0, 7), "src/small.parquet")
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    params = EnrichParams(
        source=str(tmp_path / "src"),
        dest=str(tmp_path / "dest"),
        engine=config,
        chunk_rows=25,
        run=RunOptions(retries=0),
    )
    rows = enrich_flow(params)
    assert {r["partition"]: r["rows"] for r in rows} == {
        str(tmp_path / "src" / "big.parquet"): 95,
        str(tmp_path / "src" / "small.parquet"): 7,
    }
    enrich(tmp_path / "src", tmp_path / "reference", config)
    assert assert_same_output(tmp_path / "dest", tmp_path / "reference") == 102
    assert pq.ParquetFile(tmp_path / "dest" / "big.parquet").metadata.num_rows == 95
    assert staging_is_empty(tmp_path / "dest")


def test_bad_file_fails_alone(tiny_embed_dir: Path, write_table, tmp_path: Path) -> None:
    write_table({"text": ["good text", "more"]}, "src/a.parquet")
    write_table({"text": [1, 2]}, "src/b.parquet")
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    params = EnrichParams(source=str(tmp_path / "src"), dest=str(tmp_path / "dest"), engine=config)
    state = enrich_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(PartitionsFailedError, match=r"b\.parquet.*has type int64"):
        state.result()
    assert pq.read_table(tmp_path / "dest" / "a.parquet").num_rows == 2
    assert not (tmp_path / "dest" / "b.parquet").exists()


def test_the_flow_enriches_into_a_delta_table_in_one_commit(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """A table DEST: the engine's table run in one retried task; its rows read back, and the
    flow's summary names each file."""
    deltalake = pytest.importorskip("deltalake")
    write_table({"id": [1, 2, 3], "text": ["good", "bad", None]}, "src/a.parquet")
    write_table({"id": [4], "text": ["fine"]}, "src/b.parquet")
    uri = f"delta://{tmp_path / 'table'}"
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    params = EnrichParams(source=str(tmp_path / "src"), dest=uri, engine=config)
    rows = enrich_flow(params)
    assert sorted((r["status"], r["rows"]) for r in rows) == [("committed", 1), ("committed", 3)]
    table = deltalake.DeltaTable(tmp_path / "table")
    assert table.version() == 0  # one commit for the whole run
    read = table.to_pyarrow_table().sort_by("id")
    assert read.column("id").to_pylist() == [1, 2, 3, 4]
    assert read.column("enrich_error").to_pylist() == [None, None, "text is null", None]


def test_a_bad_file_leaves_the_table_dest_uncommitted(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """A table DEST is one commit: one bad file and no file is committed, which the flow's
    summary and error say."""
    pytest.importorskip("deltalake")
    write_table({"text": ["good text", "more"]}, "src/a.parquet")
    write_table({"text": [1, 2]}, "src/b.parquet")
    uri = f"delta://{tmp_path / 'table'}"
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    params = EnrichParams(
        source=str(tmp_path / "src"), dest=uri, engine=config, run=RunOptions(retries=0)
    )
    state = enrich_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(PartitionsFailedError) as failed:
        state.result()
    assert set(failed.value.failures) == {
        str(tmp_path / "src" / n) for n in ("a.parquet", "b.parquet")
    }
    assert "not committed" in failed.value.failures[str(tmp_path / "src" / "a.parquet")]
    assert {row["status"] for row in failed.value.rows} == {"failed"}
    assert not (tmp_path / "table" / "_delta_log").exists()
