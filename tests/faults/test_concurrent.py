"""Two runs at once on one DEST: the second refuses with a clear message, the first's output
is never interleaved with anything, and after the first dies a rerun completes cleanly."""

from __future__ import annotations

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
