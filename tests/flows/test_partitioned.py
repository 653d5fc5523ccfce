"""The backfill and incremental flows under a Prefect test API: skip, reuse, failures,
retries, progress, and kill-and-resume in a real process."""

from __future__ import annotations

import errno
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertetl.config import EngineConfig
from bertetl.engine.embed import EmbedStage
from bertetl.errors import PartitionsFailedError
from bertetl.flows.params import BackfillParams, IncrementalParams, RunOptions
from bertetl.flows.partitioned import backfill_flow, incremental_flow
from bertetl.io.manifest import read_manifest
from bertetl.runs.enrich import enrich
from tests.conftest import TEXTS
from tests.outputs import assert_same_output, data_files, edit_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAST = RunOptions(retries=2, retry_delay_seconds=0)


@pytest.fixture
def config(tiny_embed_dir: Path) -> EngineConfig:
    return EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))


def backfill(src: Path, dest: Path, config: EngineConfig, **options) -> BackfillParams:
    return BackfillParams(
        source=str(src), dest=str(dest), partition_column="date", engine=config, run=FAST, **options
    )


def artifacts(flow_run_id, key: str) -> list[dict]:
    """The flow run's artifacts with `key`, read through the REST API."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {
        "artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [str(flow_run_id)]}},
        "limit": 50,
        "offset": 0,
        "sort": "CREATED_DESC",
    }
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_backfill_then_rerun_skips_then_edit_reuses(
    config, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=5), tmp_path / "dest"
    state = backfill_flow(backfill(src, dest, config), return_state=True)
    assert state.is_completed()
    rows = state.result()
    assert [r["status"] for r in rows] == ["committed"] * 5
    enrich(src, tmp_path / "reference", config)
    assert assert_same_output(dest, tmp_path / "reference") == 5 * 24

    run_id = state.state_details.flow_run_id
    (progress,) = artifacts(run_id, "bertetl-progress")
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    (summary,) = artifacts(run_id, "bertetl-summary")
    assert summary["type"] == "table" and "2026-01-05" in summary["data"]
    assert all(r["drift"] == "" for r in rows)  # the same kind of texts every day
    plot = dest / ".bertetl-reports" / "drift.png"
    assert plot.read_bytes()[:4] == b"\x89PNG"
    (drift,) = artifacts(run_id, "bertetl-drift")
    assert drift["type"] == "markdown" and "0 of 5 partition(s) to look at" in drift["data"]
    assert "](data:image/png;base64," in drift["data"] and str(plot) in drift["data"]
    (table,) = artifacts(run_id, "bertetl-drift-partitions")
    assert table["type"] == "table" and "cosine_distance" in table["data"]
    (report,) = artifacts(run_id, "bertetl-report")
    assert "## Drift" in report["data"]

    before = data_files(dest)
    rows = incremental_flow(
        IncrementalParams(
            source=str(src), dest=str(dest), partition_column="date", engine=config, run=FAST
        )
    )
    assert [r["status"] for r in rows] == ["skipped"] * 5
    assert data_files(dest) == before  # nothing rewritten

    edit_rows(src / "date=2026-01-03" / "part-0.parquet", [0, 1, 2])
    rows = incremental_flow(
        IncrementalParams(
            source=str(src), dest=str(dest), partition_column="date", engine=config, run=FAST
        )
    )
    changed = [r for r in rows if r["status"] == "committed"]
    assert [r["partition"] for r in changed] == ["2026-01-03"]
    manifest = read_manifest(dest / "date=2026-01-03")
    assert (manifest.rows_inferred, manifest.rows_reused, manifest.rows_failed) == (3, 19, 2)
    after = data_files(dest)
    assert {k for k in after if after[k] != before[k]} == {"date=2026-01-03/part-0.parquet"}
    enrich(src, tmp_path / "reference-edited", config)
    assert_same_output(dest, tmp_path / "reference-edited")


def test_corrupt_file_fails_only_its_partition(config, partitioned_source, tmp_path: Path) -> None:
    src, dest = partitioned_source(days=4), tmp_path / "dest"
    (src / "date=2026-01-02" / "part-0.parquet").write_bytes(b"not parquet at all")
    state = backfill_flow(backfill(src, dest, config), return_state=True)
    assert state.is_failed()
    with pytest.raises(PartitionsFailedError, match="date=2026-01-02"):
        state.result()
    committed = sorted(p.parent.name for p in dest.glob("*/_manifest.json"))
    assert committed == ["date=2026-01-01", "date=2026-01-03", "date=2026-01-04"]
    assert not (dest / "date=2026-01-02").exists()
    (report,) = artifacts(state.state_details.flow_run_id, "bertetl-report")
    assert "date=2026-01-02" in report["data"] and "part-0.parquet" in report["data"]
    (drift,) = artifacts(state.state_details.flow_run_id, "bertetl-drift")  # a failed run too
    assert "0 of 3 partition(s) to look at" in drift["data"]


def test_transient_io_errors_are_retried_permanent_ones_are_not(
    config, partitioned_source, tmp_path: Path, monkeypatch
) -> None:
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    import bertetl.engine.pipeline as pipeline_module

    real_stream = pipeline_module.stream
    calls: dict[str, int] = {}

    def flaky_stream(file, batch_rows, row_groups=None):
        calls[file.relative] = calls.get(file.relative, 0) + 1
        if "2026-01-02" in file.relative and calls[file.relative] <= 2:
            raise OSError(errno.EIO, "Input/output error (injected)", file.path)
        if "2026-01-01" in file.relative:
            raise PermissionError(errno.EACCES, "Permission denied (injected)", file.path)
        yield from real_stream(file, batch_rows, row_groups)

    monkeypatch.setattr(pipeline_module, "stream", flaky_stream)
    state = backfill_flow(backfill(src, dest, config), return_state=True)
    assert state.is_failed()
    assert calls["date=2026-01-02/part-0.parquet"] == 3  # two failures, then success
    assert calls["date=2026-01-01/part-0.parquet"] == 1  # permanent: not retried
    assert read_manifest(dest / "date=2026-01-02").rows_out == 24
    monkeypatch.setattr(pipeline_module, "stream", real_stream)
    enrich(src, tmp_path / "reference", config)
    (tmp_path / "reference" / "date=2026-01-01" / "part-0.parquet").unlink()
    assert_same_output(dest, tmp_path / "reference")


def test_a_real_read_eio_is_retried(
    config, partitioned_source, tmp_path: Path, monkeypatch
) -> None:
    """EIO raised inside the reader (wrapped into an InputError naming the file) is still
    recognised as transient: the partition is retried, not failed."""
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    import pyarrow.parquet as pq

    real_file, opened = pq.ParquetFile, []

    def flaky_file(path, *args, **kwargs):
        if "2026-01-02" in str(path):
            opened.append(path)
            if len(opened) <= 2:
                raise OSError(errno.EIO, "Input/output error (injected)", str(path))
        return real_file(path, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", flaky_file)
    state = backfill_flow(backfill(src, dest, config), return_state=True)
    assert state.is_completed()
    assert len(opened) == 3  # two failed attempts, then success
    monkeypatch.setattr(pq, "ParquetFile", real_file)
    enrich(src, tmp_path / "reference", config)
    assert_same_output(dest, tmp_path / "reference")


def test_simulated_cuda_oom_splits_batches_with_unchanged_output(
    config, partitioned_source, tmp_path: Path, monkeypatch
) -> None:
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    enrich(src, tmp_path / "reference", config)
    real_forward = EmbedStage._forward
    big_batches = []

    def forward_that_runs_out_of_memory(self, input_ids, attention_mask):
        if input_ids.shape[0] > 4:
            big_batches.append(input_ids.shape[0])
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return real_forward(self, input_ids, attention_mask)

    monkeypatch.setattr(EmbedStage, "_forward", forward_that_runs_out_of_memory)
    state = backfill_flow(backfill(src, dest, config), return_state=True)
    assert state.is_completed() and big_batches
    assert_same_output(dest, tmp_path / "reference")


def test_second_run_on_the_same_dest_is_refused(config, partitioned_source, tmp_path: Path) -> None:
    from bertetl.errors import CommitError
    from bertetl.io.commit import DestinationLock

    src, dest = partitioned_source(days=1), tmp_path / "dest"
    with DestinationLock(dest):
        state = backfill_flow(backfill(src, dest, config), return_state=True)
    assert state.is_failed()
    with pytest.raises(CommitError, match="another bertetl run is writing"):
        state.result()
    assert not (dest / "date=2026-01-01").exists()


def test_cli_backfill_and_incremental_contract(config, partitioned_source, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bertetl.cli import app

    src, dest = partitioned_source(days=3), tmp_path / "dest"
    common = ["--partition-column", "date", "--text-column", "text"]
    model = ["--embed-model", config.embed_model, "--batch-tokens", "128"]
    runner = CliRunner()
    days = ["--start", "2026-01-02", "--end", "2026-01-03"]
    result = runner.invoke(app, ["backfill", str(src), str(dest), *common, *days, *model])
    assert result.exit_code == 0, result.output
    assert "2 partition(s) committed" in result.output
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == [
        "date=2026-01-02",
        "date=2026-01-03",
    ]
    (src / "date=2026-01-03" / "part-0.parquet").write_bytes(b"garbage")
    result = runner.invoke(app, ["incremental", str(src), str(dest), *common, *model])
    assert result.exit_code == 1
    last_line = result.output.strip().splitlines()[-1]
    assert last_line.startswith("error: date=2026-01-03 failed") and "part-0.parquet" in last_line
    assert (dest / "date=2026-01-01" / "_manifest.json").exists()


def test_force_sends_every_row_through_the_model(
    config, partitioned_source, tmp_path: Path
) -> None:
    src, dest = partitioned_source(days=1), tmp_path / "dest"
    backfill_flow(backfill(src, dest, config))
    (row,) = backfill_flow(backfill(src, dest, config, force=True))
    assert (row["status"], row["reason"]) == ("committed", "forced")
    manifest = read_manifest(dest / "date=2026-01-01")
    assert (manifest.rows_inferred, manifest.rows_reused) == (22, 0)


def same_texts_but_one_day(root: Path, days: int, odd_day: int) -> Path:
    """Each day the same texts, but on `odd_day`: characters the models do not know."""
    for day in range(1, days + 1):
        texts = ["ж ψ " * 20] * len(TEXTS) if day == odd_day else TEXTS
        folder = root / f"date=2026-01-{day:02d}"
        folder.mkdir(parents=True)
        table = pa.table({"id": range(len(texts)), "text": pa.array(texts, pa.string())})
        pq.write_table(table, folder / "part-0.parquet")
    return root


def test_drift_warns_names_partitions_and_never_fails_the_run(
    config, tmp_path: Path, monkeypatch, caplog
) -> None:
    """A partition whose texts moved is named (a warning, its summary row); a drift plot
    that cannot be written, or a drift that cannot be computed, is a warning too."""
    import bertetl.flows.partitioned as partitioned
    from bertetl.reports.drift import DriftOptions, DriftReport

    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DriftReport, "draw", disk_full)
    src, dest = same_texts_but_one_day(tmp_path / "src", days=3, odd_day=3), tmp_path / "dest"
    params = backfill(src, dest, config, drift=DriftOptions(cosine_threshold=0.015))
    state = backfill_flow(params, return_state=True)
    assert state.is_completed()
    rows = state.result()
    assert [bool(r["drift"]) for r in rows] == [False, False, True]
    assert rows[2]["drift"].startswith("embedding: cosine distance")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("drift: date=2026-01-03: embedding: cosine") for m in warned)
    assert any(m.startswith("drift plot not drawn: OSError") for m in warned), warned
    (drift,) = artifacts(state.state_details.flow_run_id, "bertetl-drift")
    assert (
        "1 of 3 partition(s) to look at" in drift["data"] and "`date=2026-01-03`" in drift["data"]
    )
    assert "data:image/png" not in drift["data"] and not (dest / ".bertetl-reports").exists()

    def broken(*args, **kwargs):
        raise ValueError("manifests from the future")

    monkeypatch.setattr(partitioned, "drift_report", broken)
    caplog.clear()
    rows = incremental_flow(IncrementalParams(**params.model_dump(exclude={"start", "end"})))
    assert [(r["status"], r["drift"]) for r in rows] == [("skipped", None)] * 3
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "drift not computed: ValueError: manifests from the future" in warned
