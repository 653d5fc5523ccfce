"""SIGKILL a real `bertetl incremental --key` while it rewrites a folder's outputs, before its
record, and around its MERGE into a Delta table; readers see whole files (or the table before
or after the merge, never a part), and the rerun ends equal to a fresh run of the changed
SOURCE, each key once, counted by key."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.runs.keyed import KeyedOptions, run_keyed
from tests.runs.keyed_places import assert_same_by_key, change_source, read_dest, write_source

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

KEY = KeyedOptions(key=["id"])


@pytest.fixture
def config(tiny_embed_dir: Path) -> EngineConfig:
    return EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), window_rows=4)


def _args(src: Path, dest: str, config: EngineConfig) -> list[str]:
    return [
        "incremental", str(src), dest, "--key", "id", "--text-column", "text",
        "--embed-model", str(config.embed_model), "--window-rows", "4", "--retries", "0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("point", "count"),
    [("file-commit", 3), ("keyed-record", 1)],
    ids=["between-two-rewrites", "before-the-record"],
)
def test_kill_a_keyed_rewrite_of_a_folder_then_rerun(
    zygote, tmp_path: Path, config: EngineConfig, point: str, count: int
) -> None:
    src = write_source(tmp_path / "src")
    dest = str(tmp_path / "dest")
    run_keyed(src, dest, config, KEY)
    change_source(src)
    run = zygote.run(point, count, _args(src, dest, config))
    assert run.returncode == -9, f"{point} {count}: not killed; {run.stderr[-3000:]}"
    for output in Path(dest).glob("*.parquet"):  # every output whole
        pq.read_table(output)

    rerun = run_keyed(src, dest, config, KEY)
    assert rerun.committed
    run_keyed(src, tmp_path / "fresh", config, KEY)
    assert_same_by_key(read_dest(dest), read_dest(str(tmp_path / "fresh")))
    assert not list(Path(dest).glob(".*.bertetl-tmp"))  # no temp file left


@pytest.mark.parametrize("point", ["table-merge", "after-table-merge"])
def test_kill_around_a_keyed_merge_into_delta_then_rerun(
    zygote, tmp_path: Path, config: EngineConfig, point: str
) -> None:
    import deltalake

    src = write_source(tmp_path / "src")
    dest = f"delta://{tmp_path / 'dest'}"
    run_keyed(src, dest, config, KEY)
    before = read_dest(dest)
    change_source(src)
    run_keyed(src, f"delta://{tmp_path / 'fresh'}", config, KEY)
    fresh = read_dest(f"delta://{tmp_path / 'fresh'}")

    run = zygote.run(point, 1, _args(src, dest, config))
    assert run.returncode == -9, f"{point}: not killed; {run.stderr[-3000:]}"
    seen = read_dest(dest)  # the table before the merge, or after it: never a part
    assert_same_by_key(seen, fresh if point == "after-table-merge" else before)

    version = deltalake.DeltaTable(str(tmp_path / "dest")).version()
    rerun = run_keyed(src, dest, config, KEY)
    assert rerun.committed == (point == "table-merge")  # after it: nothing left to do
    assert deltalake.DeltaTable(str(tmp_path / "dest")).version() == version + rerun.committed
    assert_same_by_key(read_dest(dest), fresh)


@pytest.mark.parametrize("point", ["pg-merge", "after-pg-merge"])
def test_kill_around_a_keyed_transaction_into_postgresql_then_rerun(
    zygote, tmp_path: Path, config: EngineConfig, point: str, postgres_dest: str
) -> None:
    """PostgreSQL: the table before the transaction or after it, never a part; the rerun
    ends equal to a fresh run, each key once."""
    pytest.importorskip("psycopg")
    src = write_source(tmp_path / "src")
    run_keyed(src, postgres_dest, config, KEY)
    before = read_dest(postgres_dest)
    change_source(src)
    fresh_uri = postgres_dest + "_fresh"
    run_keyed(src, fresh_uri, config, KEY)
    fresh = read_dest(fresh_uri)

    run = zygote.run(point, 1, _args(src, postgres_dest, config))
    assert run.returncode == -9, f"{point}: not killed; {run.stderr[-3000:]}"
    assert_same_by_key(read_dest(postgres_dest), fresh if point == "after-pg-merge" else before)

    rerun = run_keyed(src, postgres_dest, config, KEY)
    assert rerun.committed == (point == "pg-merge")  # after it: nothing left to do
    assert_same_by_key(read_dest(postgres_dest), fresh)
