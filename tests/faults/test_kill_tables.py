"""SIGKILL a real `bertetl backfill` into a Delta Lake table just before and just after a
partition's table transaction; readers of the table see whole partitions only, and the rerun
ends equal to a clean run with every row once (no leftover commit, no partition twice)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from bertetl.config import EngineConfig
from bertetl.flows.params import BackfillParams, RunOptions
from bertetl.flows.partitioned import backfill_flow
from bertetl.runs.enrich import enrich
from tests.conftest import write_partitioned
from tests.runs.test_tables import assert_same_rows, read_parquet

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

DAYS, ROWS = 3, 12


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, tiny_embed_dir: Path, tiny_classifier_dir: Path
):
    """The source and its clean run (plain Parquet)."""
    root = tmp_path_factory.mktemp("kill-table")
    src = write_partitioned(root / "src", days=DAYS, rows=ROWS, files_per_day=2)
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        window_rows=4,
    )
    enrich(src, root / "reference", config)
    return src, read_parquet(root / "reference"), config


def _rows(uri: str) -> pl.DataFrame:
    path = uri.removeprefix("delta://")
    if not (Path(path) / "_delta_log").exists():
        return pl.DataFrame({"date": [], "id": []})
    return pl.read_delta(path).with_columns(pl.col("date").cast(pl.String))


@pytest.mark.parametrize(
    ("point", "count", "force"),
    [("table-commit", 2, False), ("after-table-commit", 2, True)],
    ids=["before-2nd-commit-fresh", "after-2nd-commit-force"],
)
def test_kill_into_a_delta_table_then_rerun(setup, zygote, tmp_path, point, count, force):
    src, reference, config = setup
    uri = f"delta://{tmp_path / 'enriched'}"
    params = BackfillParams(
        source=str(src), dest=uri, partition_column="date", engine=config, run=RunOptions(retries=0)
    )
    if force:  # a table readers already use, re-enriched with --force
        assert backfill_flow(params, return_state=True).is_completed()
    args = [
        "backfill", str(src), uri, "--partition-column", "date", "--text-column", "text",
        "--embed-model", config.embed_model, "--classify-model", config.classify_model,
        "--window-rows", "4", "--retries", "0",
    ]  # fmt: skip
    run = zygote.run(point, count, args + (["--force"] if force else []))
    assert run.returncode == -9, f"{point} {count}: not killed; {run.stderr[-3000:]}"

    seen = _rows(uri)  # a reader of the table now: whole partitions, each row once
    per_date = Counter(seen["date"].to_list())
    assert set(per_date.values()) <= {ROWS}
    assert seen.group_by("date", "id").len()["len"].max() in (None, 1)
    committed = set(per_date)
    assert committed == ({"2026-01-01", "2026-01-02", "2026-01-03"} if force else {"2026-01-01"})

    state = backfill_flow(params, return_state=True)  # the rerun
    assert state.is_completed()
    statuses = {row["partition"]: row["status"] for row in state.result()}
    assert {value for value, status in statuses.items() if status == "skipped"} == committed
    assert_same_rows(_rows(uri), reference)  # every row once, equal to the clean run


@pytest.mark.parametrize(
    ("point", "count"),
    [("write", 5), ("table-replace", 1), ("after-table-replace", 1)],
    ids=["mid-run", "before-commit", "after-commit"],
)
def test_kill_an_enrich_into_a_delta_table_then_rerun(setup, zygote, tmp_path, point, count):
    """`bertetl enrich` replaces a whole table in one commit: killed before it, readers see
    the table as it was (here: enriched without the classifier); killed after, the new one;
    never a mix, never a row twice. The rerun ends equal to a clean run."""
    src, reference, config = setup
    uri = f"delta://{tmp_path / 'enriched'}"
    enrich(src, uri, EngineConfig(text_column="text", embed_model=config.embed_model))
    args = [
        "enrich", str(src), uri, "--text-column", "text", "--embed-model", config.embed_model,
        "--classify-model", config.classify_model, "--window-rows", "4",
    ]  # fmt: skip
    run = zygote.run(point, count, args)
    assert run.returncode == -9, f"{point} {count}: not killed; {run.stderr[-3000:]}"

    seen = _rows(uri)
    assert ("label" in seen.columns) == (point == "after-table-replace")  # old or new, whole
    assert seen.height == DAYS * ROWS
    assert seen.group_by("date", "id").len()["len"].max() == 1

    enrich(src, uri, config)  # the rerun
    assert_same_rows(_rows(uri), reference)


def _lance_rows(uri: str) -> pl.DataFrame:
    import lance

    path = uri.removeprefix("lance://")
    if not Path(path).exists():
        return pl.DataFrame({"date": [], "id": []})
    table = pl.from_arrow(lance.dataset(path).to_table())
    assert isinstance(table, pl.DataFrame)
    return table.with_columns(pl.col("date").cast(pl.String))


@pytest.mark.parametrize(
    ("point", "count"),
    [("table-commit", 2), ("after-table-commit", 2)],
    ids=["before-2nd-commit", "after-2nd-commit"],
)
def test_kill_into_a_lance_dataset_then_rerun(setup, zygote, tmp_path, point, count):
    """As for Delta: each partition is one Lance version, so a kill before or after the second
    leaves whole partitions only, and the rerun ends equal to a clean run."""
    pytest.importorskip("lance")
    src, reference, config = setup
    uri = f"lance://{tmp_path / 'enriched'}"
    args = [
        "backfill", str(src), uri, "--partition-column", "date", "--text-column", "text",
        "--embed-model", config.embed_model, "--classify-model", config.classify_model,
        "--window-rows", "4", "--retries", "0",
    ]  # fmt: skip
    run = zygote.run(point, count, args)
    assert run.returncode == -9, f"{point} {count}: not killed; {run.stderr[-3000:]}"

    seen = _lance_rows(uri)
    per_date = Counter(seen["date"].to_list())
    assert set(per_date.values()) <= {ROWS}
    assert seen.group_by("date", "id").len()["len"].max() in (None, 1)
    committed = set(per_date)
    expected = {"2026-01-01"} if point == "table-commit" else {"2026-01-01", "2026-01-02"}
    assert committed == expected

    params = BackfillParams(
        source=str(src), dest=uri, partition_column="date", engine=config, run=RunOptions(retries=0)
    )
    state = backfill_flow(params, return_state=True)  # the rerun
    assert state.is_completed()
    statuses = {row["partition"]: row["status"] for row in state.result()}
    assert {value for value, status in statuses.items() if status == "skipped"} == committed
    assert_same_rows(_lance_rows(uri), reference, table=False)
