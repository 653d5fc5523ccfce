"""The backfill flow with `--executor ray`: one Ray Data pipeline per partition task, with
Prefect's progress artifact, summary, failure report and resume working through it."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import PartitionsFailedError
from bertetl.flows.partitioned import backfill_flow
from bertetl.io.manifest import read_manifest
from bertetl.runs.enrich import enrich
from tests.executors.ray.test_executor import corrupt_page
from tests.flows.test_partitioned import artifacts, backfill
from tests.outputs import assert_equivalent, staging_is_empty

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_harness", "local_ray"),
]


def test_backfill_on_ray_reports_fails_one_partition_and_resumes(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    local = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    on_ray = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), executor="ray")
    src, dest = partitioned_source(days=3, files_per_day=2), tmp_path / "dest"
    broken = src / "date=2026-01-02" / "part-1.parquet"
    good_copy = broken.read_bytes()
    corrupt_page(broken, row_group=0)

    state = backfill_flow(backfill(src, dest, on_ray), return_state=True)
    assert state.is_failed()
    with pytest.raises(PartitionsFailedError, match=r"date=2026-01-02.*part-1\.parquet"):
        state.result()
    committed = sorted(p.parent.name for p in dest.glob("*/_manifest.json"))
    assert committed == ["date=2026-01-01", "date=2026-01-03"]
    run_id = state.state_details.flow_run_id
    (report,) = artifacts(run_id, "bertetl-report")
    assert "date=2026-01-02" in report["data"] and "part-1.parquet" in report["data"]
    (summary,) = artifacts(run_id, "bertetl-summary")
    assert "2026-01-01" in summary["data"] and "committed" in summary["data"]

    broken.write_bytes(good_copy)  # repaired: the rerun enriches only that partition
    state = backfill_flow(backfill(src, dest, on_ray), return_state=True)
    assert state.is_completed()
    assert [r["status"] for r in state.result()] == ["skipped", "committed", "skipped"]
    (progress,) = artifacts(state.state_details.flow_run_id, "bertetl-progress")
    assert float(progress["data"]) == 100.0

    enrich(src, tmp_path / "reference", local)
    assert assert_equivalent(dest, tmp_path / "reference") == 3 * 24
    for day in ("01", "02", "03"):
        manifest = read_manifest(dest / f"date=2026-01-{day}")
        assert manifest.rows_in == manifest.rows_out == 24
        assert manifest.rows_reused == 0  # row reuse is the local executor's
        rows = pq.read_table(dest / f"date=2026-01-{day}").num_rows
        assert rows == 24
    assert staging_is_empty(dest)


def test_enrich_flow_on_ray_runs_every_file_in_one_task(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    from bertetl.flows.enrich import enrich_flow
    from bertetl.flows.params import EnrichParams, RunOptions

    src = partitioned_source(days=2, files_per_day=2)
    broken = src / "date=2026-01-02" / "part-0.parquet"
    broken.write_bytes(broken.read_bytes()[:-50])  # truncated: fails alone
    on_ray = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), executor="ray")
    params = EnrichParams(
        source=str(src), dest=str(tmp_path / "dest"), engine=on_ray, run=RunOptions(retries=0)
    )
    state = enrich_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(PartitionsFailedError, match=r"part-0\.parquet"):
        state.result()
    broken.unlink()
    local = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    enrich(src, tmp_path / "reference", local)
    assert assert_equivalent(tmp_path / "dest", tmp_path / "reference") == 3 * 12
    (progress,) = artifacts(state.state_details.flow_run_id, "bertetl-progress")
    assert float(progress["data"]) == 100.0
