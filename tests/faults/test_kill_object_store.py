"""SIGKILL a real `bertetl backfill` process writing to S3, GCS or Azure (moto,
fake-gcs-server, Azurite, on loopback) at the steps of an object-store commit; the rerun must
end equal to a clean run, with no row lost or doubled for a reader that follows the
manifests, nothing stale left behind, and the killed run's lock taken over at once (its
process is gone) rather than after its lease.

The points: `delete` (the first commit step of a partition removes its old manifest), `upload`
(between the outputs of a partition) and `manifest` (every output uploaded, the commit point
not yet written). `force` reruns replace partitions that readers can already see.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.flows.params import BackfillParams, RunOptions
from bertetl.flows.partitioned import backfill_flow
from bertetl.io.stores.locations import LOCK_NAME
from bertetl.io.stores.objects import clean_local_staging
from bertetl.runs.enrich import enrich
from tests.conftest import write_partitioned
from tests.outputs import assert_equivalent
from tests.runs.test_object_store import download, objects, read_by_manifests

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

DAYS, FILES, ROWS = 3, 2, 12


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tiny_embed_dir: Path):
    """One source table and its clean local run, shared by every kill point."""
    root = tmp_path_factory.mktemp("kill-s3")
    src = write_partitioned(root / "src", days=DAYS, rows=ROWS, files_per_day=FILES)
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), window_rows=4)
    enrich(src, root / "reference", config)
    return src, root / "reference", config


def _params(src: Path, uri: str, config: EngineConfig, storage: dict) -> BackfillParams:
    return BackfillParams(
        source=str(src),
        dest=uri,
        partition_column="date",
        engine=config,
        run=RunOptions(retries=0),
        storage_options=storage,
    )


def _by_manifests(dest) -> Counter:
    seen = read_by_manifests(dest)
    if not seen.num_rows:
        return Counter()
    return Counter(zip(seen.column("date").to_pylist(), seen.column("id").to_pylist(), strict=True))


@pytest.mark.parametrize(
    ("store", "point", "count", "force"),
    [
        ("s3", "delete", 2, True),
        ("s3", "upload", 3, True),
        ("s3", "manifest", 2, False),
        ("gs", "upload", 3, True),
        ("gs", "manifest", 2, False),
        ("abfs", "upload", 3, True),
    ],
    ids=["s3-delete-2-force", "s3-upload-3-force", "s3-manifest-2-fresh", "gs-upload-3-force",
         "gs-manifest-2-fresh", "abfs-upload-3-force"],
    indirect=["store"],
)  # fmt: skip
def test_kill_into_a_store_then_rerun_equals_a_clean_run(
    source, zygote, tiny_embed_dir, store, tmp_path: Path, point, count, force
) -> None:
    src, reference, config = source
    uri, storage = store.uri("enriched"), store.options
    dest = store.location("enriched")
    if force:  # committed partitions that readers see, then re-enriched with --force
        assert backfill_flow(_params(src, uri, config, storage), return_state=True).is_completed()
    expected = Counter(
        (p.parent.name.split("=", 1)[1], i)
        for p in reference.rglob("*.parquet")
        for i in pq.read_table(p).column("id").to_pylist()
    )
    args = [
        "backfill", str(src), uri, "--partition-column", "date", "--text-column", "text",
        "--embed-model", str(tiny_embed_dir), "--window-rows", "4", "--retries", "0",
        *(f"--storage-option={key}={value}" for key, value in storage.items()),
    ]  # fmt: skip
    run = zygote.run(point, count, args + (["--force"] if force else []))
    assert run.returncode == -9, f"{point} {count}: not killed; {run.stderr[-3000:]}"
    assert LOCK_NAME in objects(dest)  # the killed run's lock is still there

    # a reader that follows the manifests sees whole partitions, each row once
    seen = _by_manifests(dest)
    assert set(seen.values()) <= {1} and set(seen) <= set(expected)
    committed = {value for value, _ in seen}
    assert all(seen[(value, i)] for value, i in expected if value in committed)

    state = backfill_flow(_params(src, uri, config, storage), return_state=True)  # the rerun
    assert state.is_completed(), f"rerun after {point} {count} failed"
    statuses = {row["partition"]: row["status"] for row in state.result()}
    assert {v for v, s in statuses.items() if s == "skipped"} == committed  # not redone
    assert _by_manifests(dest) == expected  # no row lost, none doubled
    listed = objects(dest)
    assert LOCK_NAME not in listed  # taken over, then released
    data = {name for name in listed if name.endswith(".parquet")}
    assert data == {p.relative_to(reference).as_posix() for p in reference.rglob("*.parquet")}
    assert assert_equivalent(download(dest, tmp_path / "downloaded"), reference) == len(expected)
    assert clean_local_staging(dest) == 0  # the rerun left no local staging behind
