"""A two-node Ray cluster on this machine (`ray start --head` plus `ray start --address`,
started and stopped here) runs `bertetl enrich --executor ray --ray-address ...`."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bertetl.config import EngineConfig
from bertetl.runs.enrich import enrich
from tests.executors.ray.test_executor import write_source
from tests.outputs import assert_equivalent

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(log: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while STARTED not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {STARTED!r} in {log}"
        time.sleep(0.2)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Head and worker node, 2 CPUs each, with a fresh auth token; stopped after the test."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # as --disable-usage-stats does for the nodes: no usage-collection actor for the driver
    env |= {"RAY_USAGE_STATS_ENABLED": "0"}
    # idle workers are kept for the next tasks, not stopped after 1 s (Ray keeps only as many
    # as the node has CPUs) and restarted: each new worker costs ~2 s CPU importing Ray Data
    node_env = env | {"RAY_num_workers_soft_limit": "8"}
    common = ["--num-cpus=2", "--disable-usage-stats", "--block"]
    nodes = []
    try:
        for name, args in (
            ("head", ["--head", f"--port={port}", "--include-dashboard=false"]),
            ("worker", [f"--address=127.0.0.1:{port}"]),
        ):
            log = tmp_path / f"{name}.log"
            with open(log, "w") as out:
                process = subprocess.Popen(
                    [RAY, "start", *args, *common],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=node_env,
                    start_new_session=True,  # the node's processes form one group to stop
                )
            nodes.append(process)
            wait_for(log, process)
        yield f"127.0.0.1:{port}", env
    finally:  # raylet and GCS drain for ~30s on SIGTERM; a test cluster need not
        for process in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_enrich_on_a_two_node_cluster(two_nodes, tiny_embed_dir: Path, tmp_path: Path) -> None:
    address, env = two_nodes
    src = write_source(tmp_path / "src", days=2, files_per_day=2, rows=40)
    command = [sys.executable, "-m", "bertetl", "enrich", str(src), str(tmp_path / "ray")]
    command += ["--text-column", "text", "--embed-model", str(tiny_embed_dir)]
    command += ["--window-rows", "16", "--executor", "ray", "--ray-address", address]
    command += ["--ray-tokenizers", "1"]  # one tokenizer actor feeds both nodes
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "enriched 160 rows from 4 file(s)" in done.stdout
    assert "model_actors=2" in done.stderr  # one model actor per node
    assert "tokenize_actors=1" in done.stderr
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), window_rows=16)
    enrich(src, tmp_path / "local", config)
    assert assert_equivalent(tmp_path / "ray", tmp_path / "local") == 160
