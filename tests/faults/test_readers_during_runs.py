"""A reader polling DEST while a real `bertetl backfill` writes it: into S3 (a reader that
follows the manifests) and into a Delta table (polars' `read_delta`). Every state it sees is
whole partitions, each row once, each equal in rows to the clean run's; and it does see the
run half done (each commit is followed by a pause, `kill.py`'s `slow` point, so it must)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from bertetl.io.stores.locations import parse_location
from tests.conftest import write_partitioned
from tests.runs.test_object_store import read_by_manifests

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

DAYS, ROWS = 3, 12


def _s3_rows(dest) -> Counter:
    seen = read_by_manifests(dest)
    if not seen.num_rows:
        return Counter()
    return Counter(zip(seen.column("date").to_pylist(), seen.column("id").to_pylist(), strict=True))


def _delta_rows(path: Path) -> Counter:
    if not (path / "_delta_log").exists():
        return Counter()
    table = pl.read_delta(str(path)).with_columns(pl.col("date").cast(pl.String))
    return Counter(zip(table["date"].to_list(), table["id"].to_list(), strict=True))


@pytest.mark.parametrize("kind", ["s3", "delta"])
def test_a_reader_polling_during_a_backfill_sees_only_whole_partitions(
    zygote, kind: str, tiny_embed_dir: Path, bucket: str, storage: dict, tmp_path: Path
) -> None:
    src = write_partitioned(tmp_path / "src", days=DAYS, rows=ROWS, files_per_day=2)
    args = [
        "backfill", str(src), "--partition-column", "date", "--text-column", "text",
        "--embed-model", str(tiny_embed_dir), "--window-rows", "4", "--retries", "0",
    ]  # fmt: skip
    if kind == "s3":
        uri = f"s3://{bucket}/enriched"
        args[2:2] = [uri, "--storage-option", f"endpoint_url={storage['endpoint_url']}"]
        location = parse_location(uri, storage)
        read = lambda: _s3_rows(location)  # noqa: E731
    else:
        path = tmp_path / "enriched"
        args[2:2] = [f"delta://{path}"]
        read = lambda: _delta_rows(path)  # noqa: E731
    outcome: dict = {}
    run = threading.Thread(target=lambda: outcome.update(run=zygote.run("slow", 15, args)))
    run.start()
    states = []
    while run.is_alive():
        rows = read()
        assert set(rows.values()) <= {1}, "a row seen twice"
        per_partition = Counter(date for date, _ in rows)
        assert set(per_partition.values()) <= {ROWS}, f"a partial partition: {per_partition}"
        states.append(len(per_partition))
    run.join()
    assert outcome["run"].returncode == 0, outcome["run"].stderr[-3000:]
    final = read()
    assert len(final) == DAYS * ROWS and set(final.values()) == {1}
    assert set(states) & set(range(1, DAYS)), f"never saw the run half done: {set(states)}"
