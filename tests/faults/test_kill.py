"""SIGKILL a real `bertetl backfill` process at seeded kill points; every rerun must end equal
to a clean run, with no row lost or doubled and nothing half-written visible in between.

Each kill point is one test. `BERTETL_KILLS` sets how many kill points are tried (default: each
point once; `make soak` runs more) and `BERTETL_KILL_SEED` the schedule's seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.flows.params import BackfillParams, RunOptions
from bertetl.flows.partitioned import backfill_flow
from bertetl.io.manifest import MANIFEST_NAME
from bertetl.runs.enrich import enrich
from tests.conftest import write_partitioned
from tests.faults.kill import POINTS
from tests.outputs import assert_same_output, staging_is_empty

pytestmark = pytest.mark.slow

DAYS, FILES, ROWS, WINDOW = 4, 2, 24, 4
#: How often each step runs in one full run of the table above (an upper bound for N).
CALLS = {
    "read": DAYS * ROWS // WINDOW,
    "infer": DAYS * ROWS // WINDOW // 2,  # windows whose rows are all null/blank skip it
    "write": DAYS * ROWS // WINDOW,
    "file-commit": DAYS * FILES,
    "manifest": DAYS,
    "swap": DAYS,
    "after-swap": DAYS,
}


def schedule(count: int, seed: int) -> list[tuple[str, int, bool]]:
    """`count` kill points: every point at least once, then seeded random ones; each with
    whether the killed run starts from an empty DEST (True) or re-enriches (`--force`) a
    committed one, replacing partitions that readers can see."""
    rng = random.Random(seed)
    points = [*POINTS, *(rng.choice(POINTS) for _ in range(max(0, count - len(POINTS))))]
    return [(p, rng.randint(1, CALLS[p]), rng.random() < 0.5) for p in points[:count]]


def visible_files(dest: Path) -> list[Path]:
    return [
        p
        for p in dest.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(dest).parts)
        and p.name != MANIFEST_NAME
    ]


def check_visible_state(dest: Path, reference: Path) -> int:
    """What a reader sees now: only whole partitions (with a manifest), each equal to the
    clean run's. Returns the rows visible."""
    rows = 0
    for partition in sorted(p for p in dest.iterdir() if not p.name.startswith(".")):
        assert (partition / MANIFEST_NAME).exists(), f"{partition.name} visible uncommitted"
        rows += assert_same_output(partition, reference / partition.name)
    for file in visible_files(dest):
        assert file.suffix == ".parquet", f"stray visible file {file}"
    if any(dest.rglob("*.parquet")):  # what a polars glob reader sees, hidden files included
        glob = pl.scan_parquet(f"{dest}/**/*.parquet").select(pl.len()).collect().item()
        assert glob == rows, "a polars glob over DEST sees rows that are not committed"
    return rows


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory, tiny_embed_dir: Path, zygote):
    """One source, its clean reference run and a committed DEST (for `--force` reruns), shared
    by every kill point; writes the campaign's tally to BERTETL_FAULT_REPORT at the end."""
    root = tmp_path_factory.mktemp("kill")
    src = write_partitioned(root / "src", days=DAYS, rows=ROWS, files_per_day=FILES)
    config = EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), window_rows=WINDOW, batch_tokens=64
    )
    enrich(src, root / "reference", config)
    committed = root / "committed"
    assert backfill_flow(_params(src, committed, config), return_state=True).is_completed()
    expected_ids = Counter(
        (p.parent.name, i)
        for p in (root / "reference").rglob("*.parquet")
        for i in pq.read_table(p).column("id").to_pylist()
    )
    tally: Counter = Counter()
    yield {
        "zygote": zygote,
        "src": src,
        "reference": root / "reference",
        "committed": committed,
        "config": config,
        "expected_ids": expected_ids,
        "tally": tally,
    }
    if report := os.environ.get("BERTETL_FAULT_REPORT"):
        summary = {"kill points": len(SCHEDULE), "seed": SEED, "killed": tally["killed"], **tally}
        Path(report).write_text(json.dumps({**summary, "rows lost": 0, "rows doubled": 0}))


def _params(src: Path, dest: Path, config: EngineConfig) -> BackfillParams:
    return BackfillParams(
        source=str(src),
        dest=str(dest),
        partition_column="date",
        engine=config,
        run=RunOptions(retries=0),
    )


#: Each kill point once by default (`make soak` sets BERTETL_KILLS for a longer campaign).
KILLS = int(os.environ.get("BERTETL_KILLS", str(len(POINTS))))
SEED = int(os.environ.get("BERTETL_KILL_SEED", "2026"))
SCHEDULE = schedule(KILLS, SEED)


@pytest.mark.parametrize(
    ("point", "count", "fresh"),
    SCHEDULE,
    ids=[f"{p}-{n}-{'fresh' if f else 'force'}" for p, n, f in SCHEDULE],
)
def test_kill_then_rerun_equals_a_clean_run(
    campaign, tiny_embed_dir: Path, tmp_path: Path, point: str, count: int, fresh: bool
) -> None:
    src, reference, config = campaign["src"], campaign["reference"], campaign["config"]
    dest = tmp_path / "dest"
    if not fresh:  # re-enrich (--force) partitions that readers can see
        shutil.copytree(campaign["committed"], dest)
    args = [
        "backfill", str(src), str(dest), "--partition-column", "date", "--text-column", "text",
        "--embed-model", str(tiny_embed_dir), "--window-rows", str(WINDOW),
        "--batch-tokens", "64", "--retries", "0",
    ]  # fmt: skip
    run = campaign["zygote"].run(point, count, args + ([] if fresh else ["--force"]))
    # every count in the schedule is reachable in this table, so every run is killed
    assert run.returncode == -9, f"{point} {count}: not killed; {run.stderr[-3000:]}"
    tally = campaign["tally"]
    tally["killed"] += 1
    tally[point] += 1
    committed = set()
    if dest.exists():
        tally["rows seen while killed"] += check_visible_state(dest, reference)
        committed = {p.parent.name.split("=", 1)[1] for p in dest.glob(f"*/{MANIFEST_NAME}")}
    state = backfill_flow(_params(src, dest, config), return_state=True)  # the rerun
    assert state.is_completed(), f"rerun after {point} {count} failed"
    statuses = {row["partition"]: row["status"] for row in state.result()}
    # the rerun finishes what is missing: what was committed before the kill is not redone
    assert {value for value, status in statuses.items() if status == "skipped"} == committed
    assert sorted(statuses.values()).count("committed") == DAYS - len(committed)
    assert check_visible_state(dest, reference) == DAYS * ROWS
    ids = Counter(
        (p.parent.name, i)
        for p in visible_files(dest)
        for i in pq.read_table(p).column("id").to_pylist()
    )
    assert ids == campaign["expected_ids"]  # no row lost, none doubled
    assert staging_is_empty(dest)
    tally["rows compared after rerun"] += sum(ids.values())
