"""A two-node Ray cluster whose nodes share no disk, writing to S3 (docs/SCALING.md).

The head runs no task (`--num-cpus 0`: only the driver is there); the worker node runs in its
own mount namespace with a private `/tmp` (`unshare --mount`, a fresh tmpfs) and its own
loopback address, so it sees none of the driver's scratch or staging. SOURCE and DEST are on
the test S3 server; the worker reaches it with the keys in its environment. The model folder
is outside `/tmp` (in /var/tmp), which both nodes see, as an image's baked-in model would be.

`bertetl backfill --executor ray` must then equal the local executor's run of the same
SOURCE, and leave nothing under DEST's `.bertetl-staging/`. The worker node's raylet
SIGKILLed mid-run (once parts are on the store), the driver killed, a fresh worker node
started and the run repeated: complete, no row lost or doubled, no staged object left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bertetl.config import EngineConfig
from bertetl.io.stores.locations import Location, parse_location
from bertetl.io.stores.node_staging import NODE_STAGING
from bertetl.runs.enrich import enrich
from tests.conftest import write_partitioned
from tests.executors.ray.test_cluster import RAY, free_port, wait_for
from tests.outputs import assert_equivalent
from tests.runs.test_object_store import download, objects, read_by_manifests, upload_tree

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private /tmp needs root (mount)"),
]
DAYS, FILES, ROWS = 3, 2, 160
#: The head notices a lost node within about a second (Ray's default is about 15 s).
HEALTH = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "2",
}


def _private_tmp() -> str:
    """Shell commands (run in the worker's own mount namespace) that put a fresh tmpfs over
    /tmp, so the worker sees none of the driver's scratch, but keep the checkout visible at
    its own path when it lies under /tmp (a CI clone there: its venv runs `ray`)."""
    repo = Path(__file__).resolve().parents[3]
    if Path("/tmp") not in repo.parents:
        return "mount -t tmpfs tmpfs /tmp"
    top = Path("/tmp") / repo.relative_to("/tmp").parts[0]  # the folder under /tmp holding it
    return (
        f"mount --bind {top} /mnt && mount -t tmpfs tmpfs /tmp && mkdir -p {top} "
        f"&& mount --bind /mnt {top}"
    )


class Cluster:
    """The head (no CPU for tasks) and one worker node in a private mount namespace."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        self.env |= {"RAY_USAGE_STATS_ENABLED": "0", "RAY_num_workers_soft_limit": "8"}
        self.env |= {"OMP_NUM_THREADS": "1"}
        self.nodes: list[subprocess.Popen] = []
        self.worker: subprocess.Popen | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env | HEALTH,
                start_new_session=True,  # the node's processes form one group to stop
            )
        self.nodes.append(process)
        wait_for(log, process)
        return process

    def start_head(self) -> None:
        head = ["--head", f"--port={self.port}", "--include-dashboard=false", "--num-cpus=0"]
        self._start("head", [RAY, "start", *head, "--disable-usage-stats", "--block"])

    def start_worker(self) -> None:
        """A worker node with 2 CPUs, at 127.0.0.2, seeing a /tmp of its own."""
        self.starts += 1
        ray = f"{RAY} start --address={self.address} --node-ip-address=127.0.0.2 "
        ray += "--num-cpus=2 --disable-usage-stats --block"
        private = f"{_private_tmp()} && exec {ray}"
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", private]
        self.worker = self._start(f"worker-{self.starts}", command)

    def raylet_of_worker(self) -> int:
        """The pid of the worker node's raylet (its process group's `raylet`)."""
        assert self.worker is not None
        group = self.worker.pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) != group:
                    continue
                if (entry / "comm").read_text().strip() == "raylet":
                    return int(entry.name)
        raise AssertionError("no raylet in the worker node's process group")

    def stop_worker(self) -> None:
        assert self.worker is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def alive_worker_nodes(self) -> int:
        """Alive nodes with CPUs, as the head sees them (asked from a fresh driver)."""
        script = (
            f"import ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU')))"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=self.env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    def stop(self) -> None:  # raylet and GCS drain for ~30s on SIGTERM; a test cluster need not
        for process in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the module; its nodes have the S3 server's keys (set by `s3_endpoint`)
    in their environment, as each node's credential chain would."""
    nodes = Cluster(tmp_path_factory.mktemp("no-shared-disk"))
    try:
        nodes.start_head()
        nodes.start_worker()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def model_outside_tmp(tiny_embed_dir: Path) -> Iterator[Path]:
    """The tiny model in a folder both nodes see (the worker's /tmp is its own)."""
    folder = Path(tempfile.mkdtemp(prefix="bertetl-model-", dir="/var/tmp"))
    try:
        shutil.copytree(tiny_embed_dir, folder / "tiny-embed")
        yield folder / "tiny-embed"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, model_outside_tmp: Path):
    """A partitioned SOURCE and its clean run with the local executor (the reference)."""
    root = tmp_path_factory.mktemp("no-shared-disk-source")
    src = write_partitioned(root / "src", days=DAYS, rows=ROWS, files_per_day=FILES)
    config = EngineConfig(text_column="text", embed_model=str(model_outside_tmp), window_rows=16)
    enrich(src, root / "reference", config)
    return src, root / "reference"


def backfill(cluster: Cluster, src: str, dest: str, model: Path, storage: dict, prefect: str):
    """`bertetl backfill --executor ray` on the cluster, as a process of its own."""
    command = [sys.executable, "-m", "bertetl", "backfill", src, dest, "--partition-column"]
    command += ["date", "--text-column", "text", "--embed-model", str(model)]
    command += ["--window-rows", "16", "--executor", "ray", "--ray-address", cluster.address]
    command += ["--storage-option", f"endpoint_url={storage['endpoint_url']}", "--retries", "0"]
    env = cluster.env | {"PREFECT_API_URL": prefect, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def staged_objects(dest: Location) -> list[str]:
    return [name for name in objects(dest) if name.startswith(NODE_STAGING + "/")]


def check_complete(dest: Location, reference: Path, local: Path) -> None:
    """DEST equals the reference, every row once for a reader following the manifests, and
    nothing is left staged on the store."""
    assert assert_equivalent(download(dest, local), reference) == DAYS * ROWS
    seen = read_by_manifests(dest)
    dates, ids = seen.column("date").to_pylist(), seen.column("id").to_pylist()
    counts = Counter(zip(dates, ids, strict=True))
    assert len(counts) == DAYS * ROWS and set(counts.values()) == {1}
    assert staged_objects(dest) == []


@pytest.fixture(scope="module")
def prefect_url(prefect_harness: dict) -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _upload(src: Path, bucket: str, storage: dict) -> str:
    uri = f"s3://{bucket}/src"
    upload_tree(src, parse_location(uri, storage))
    return uri


def test_workers_write_to_s3_and_the_driver_commits(
    cluster, source, model_outside_tmp, bucket, storage, prefect_url, tmp_path: Path
) -> None:
    src, reference = source
    dest = parse_location(f"s3://{bucket}/dest", storage)
    run = backfill(
        cluster, _upload(src, bucket, storage), dest.uri, model_outside_tmp, storage, prefect_url
    )
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output[-4000:]
    check_complete(dest, reference, tmp_path / "from-s3")


def test_worker_node_killed_mid_run_then_a_rerun_completes(
    cluster, source, model_outside_tmp, bucket, storage, prefect_url, tmp_path: Path
) -> None:
    src, reference = source
    dest = parse_location(f"s3://{bucket}/dest", storage)
    src_uri = _upload(src, bucket, storage)
    run = backfill(cluster, src_uri, dest.uri, model_outside_tmp, storage, prefect_url)
    try:
        deadline = time.monotonic() + 240
        while not any("/ray-parts/" in name for name in staged_objects(dest)):
            assert run.poll() is None, run.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no part was staged on the store"
            time.sleep(0.1)
        os.kill(cluster.raylet_of_worker(), signal.SIGKILL)  # the node is lost mid-run
        assert run.poll() is None  # the run was still going when its node went
    finally:  # with no node left to run on, the driver waits: it is killed too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
    assert staged_objects(dest)  # the killed run left its staging on the store
    cluster.stop_worker()
    cluster.start_worker()  # a fresh node (its /tmp empty again) joins
    deadline = time.monotonic() + 60
    while cluster.alive_worker_nodes() != 1:  # the lost node is seen as dead
        assert time.monotonic() < deadline
    rerun = backfill(cluster, src_uri, dest.uri, model_outside_tmp, storage, prefect_url)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output[-4000:]
    check_complete(dest, reference, tmp_path / "from-s3")


def test_a_local_dest_the_worker_cannot_see_is_refused_in_one_line(
    cluster, source, model_outside_tmp, bucket, storage, tmp_path: Path
) -> None:
    """A local DEST's folder is on the driver's disk only: refused before any work."""
    src, _ = source
    command = [sys.executable, "-m", "bertetl", "enrich", _upload(src, bucket, storage)]
    command += [str(tmp_path / "dest"), "--text-column", "text", "--embed-model"]
    command += [str(model_outside_tmp), "--executor", "ray", "--ray-address", cluster.address]
    command += ["--storage-option", f"endpoint_url={storage['endpoint_url']}"]
    done = subprocess.run(command, capture_output=True, text=True, env=cluster.env, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --executor ray: 1 of the cluster's 1 node(s) cannot read")
    assert "every node needs DEST's filesystem mounted at the same path" in last
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "dest").rglob("*.parquet"))
