"""Two runs at once on one DEST: the second refuses with a clear message, the first's output
is never interleaved with anything, and after the first dies a rerun completes cleanly."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertetl.config import EngineConfig
from bertetl.errors import CommitError
from bertetl.flows.params import BackfillParams
from bertetl.flows.partitioned import backfill_flow
from bertetl.runs.enrich import enrich
from tests.outputs import assert_same_output

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
REPO = Path(__file__).resolve().parents[2]


def test_second_run_is_refused_while_the_first_holds_dest(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    src, dest = partitioned_source(days=3), tmp_path / "dest"
    paused = tmp_path / "paused"
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "BERTETL_PAUSE_FILE": str(paused),
    }
    args = [
        "backfill", str(src), str(dest), "--partition-column", "date",
        "--text-column", "text", "--embed-model", str(tiny_embed_dir),
    ]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.kill", "write", "2", "--", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not paused.exists():  # the first run is now mid-partition, holding DEST
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the first run never reached its pause point"
            time.sleep(0.2)
        config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
        params = BackfillParams(
            source=str(src), dest=str(dest), partition_column="date", engine=config
        )
        state = backfill_flow(params, return_state=True)
        assert state.is_failed()
        with pytest.raises(CommitError, match=rf"another bertetl run is writing .*pid {first.pid}"):
            state.result()
        with pytest.raises(CommitError, match="another bertetl run is writing"):
            enrich(src, dest, config)  # the plain engine honours the same lock
    finally:
        first.kill()
        first.wait(timeout=60)
    state = backfill_flow(params, return_state=True)
    assert state.is_completed()
    enrich(src, tmp_path / "reference", config)
    assert assert_same_output(dest, tmp_path / "reference") == 3 * 24


def test_the_cli_holds_dest_from_its_checks_to_the_end_of_the_flow(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No gap between the CLI's early lock check and the flow's lock: while Prefect's server
    starts, another run is refused; the flow itself, in the CLI's context, runs."""
    from typer.testing import CliRunner

    from bertetl.cli import app
    from bertetl.io.commit import DestinationLock

    src, dest = partitioned_source(days=1), tmp_path / "dest"
    refused: list[str] = []

    @contextlib.contextmanager
    def server_starting():
        other = DestinationLock(dest)  # another run, at the moment the server would start
        try:
            other.acquire()
        except CommitError as e:
            refused.append(str(e))
        else:
            other.release()
        yield

    monkeypatch.setattr("bertetl.flows.local.local_api", server_starting)
    args = [
        "backfill", str(src), str(dest), "--partition-column", "date",
        "--text-column", "text", "--embed-model", str(tiny_embed_dir),
    ]  # fmt: skip
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert refused and f"pid {os.getpid()}" in refused[0]
    assert "1 partition(s) committed" in run.output
    with DestinationLock(dest):  # released at the end
        pass
