"""Permanent bad files fail only their partition (named with file and column); schema drift
between files of one partition is handled: each output file keeps its own input schema."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import PartitionsFailedError
from bertetl.flows.params import BackfillParams, RunOptions
from bertetl.flows.partitioned import backfill_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-30])


def _not_parquet(path: Path) -> None:
    path.write_text("id,text\n1,this is a csv file\n")


def _int_text(path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "text": [10, 20]}), path)


def _no_text(path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "body": ["a", "b"]}), path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, r"cannot read Parquet file .*date=2026-01-02/part-1\.parquet"),
        (_not_parquet, r"cannot read Parquet file .*date=2026-01-02/part-1\.parquet"),
        (_int_text, r"date=2026-01-02/part-1\.parquet: text column 'text' has type int64"),
        (_no_text, r"date=2026-01-02/part-1\.parquet: text column 'text' not found"),
    ],
)
def test_bad_file_fails_only_its_partition(
    damage, message: str, tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=3, files_per_day=2), tmp_path / "dest"
    damage(src / "date=2026-01-02" / "part-1.parquet")
    params = BackfillParams(
        source=str(src),
        dest=str(dest),
        partition_column="date",
        engine=EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)),
        run=RunOptions(retries=2, retry_delay_seconds=0),
    )
    state = backfill_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(PartitionsFailedError, match=message):
        state.result()
    assert sorted(p.parent.name for p in dest.glob("*/_manifest.json")) == [
        "date=2026-01-01",
        "date=2026-01-03",
    ]
    assert not (dest / "date=2026-01-02").exists()


def test_schema_drift_inside_a_partition_is_handled(tiny_embed_dir: Path, tmp_path: Path) -> None:
    """An extra column in one file and large_string text in another: each output file keeps
    its input's columns and types, plus the added ones."""
    folder = tmp_path / "src" / "date=2026-01-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2], "text": ["one", "two"]}), folder / "a.parquet")
    pq.write_table(pa.table({"id": [3], "text": ["three"], "lang": ["en"]}), folder / "b.parquet")
    pq.write_table(
        pa.table({"id": [4], "text": pa.array(["four"], pa.large_string())}), folder / "c.parquet"
    )
    dest = tmp_path / "dest"
    params = BackfillParams(
        source=str(tmp_path / "src"),
        dest=str(dest),
        partition_column="date",
        engine=EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)),
    )
    (row,) = backfill_flow(params)
    assert (row["status"], row["rows"], row["inferred"]) == ("committed", 4, 4)
    out = dest / "date=2026-01-01"
    assert pq.read_schema(out / "b.parquet").names == [
        "id", "text", "lang", "embedding", "enrich_error",
    ]  # fmt: skip
    assert pq.read_schema(out / "c.parquet").field("text").type == pa.large_string()
    for name in ("a", "b", "c"):
        original = pq.read_table(folder / f"{name}.parquet")
        enriched = pq.read_table(out / f"{name}.parquet")
        assert enriched.select(original.column_names).equals(original)


def test_the_cli_lists_every_failed_partition_and_says_why_each_is_redone(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The final error names the first failure "and 1 more; the run summary lists all": the
    CLI's summary does, one line each; and the log says why each partition is (re)done."""
    import logging

    from typer.testing import CliRunner

    from bertetl.cli import app

    src, dest = partitioned_source(days=3), tmp_path / "dest"
    _not_parquet(src / "date=2026-01-01" / "part-0.parquet")
    _no_text(src / "date=2026-01-03" / "part-0.parquet")
    args = [
        "backfill", str(src), str(dest), "--partition-column", "date", "--text-column", "text",
        "--embed-model", str(tiny_embed_dir), "--retries", "0",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO):
        run = CliRunner().invoke(app, args)
    assert run.exit_code == 1
    assert "and 1 more; the run summary lists all" in run.stderr
    listed = [line for line in run.stdout.splitlines() if line.startswith("  failed: ")]
    assert [line.split(":")[1].strip() for line in listed] == ["2026-01-01", "2026-01-03"]
    assert "cannot read Parquet file" in listed[0] and "'text' not found" in listed[1]
    assert "date=2026-01-02: new" in caplog.text
