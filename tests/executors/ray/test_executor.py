"""`--executor ray` on a real local Ray (one per session): the same output as the local
executor, failures named per file, a killed model actor, and the one-line hint without Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import FilesFailedError
from bertetl.runs.enrich import enrich
from tests.conftest import partition_texts
from tests.outputs import assert_equivalent, staging_is_empty

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


@pytest.fixture
def local_config(
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
    tiny_multilabel_dir: Path,
    tiny_token_classifier_dir: Path,
) -> EngineConfig:
    """Embed and classify, plus a named multi-label head, a zero-shot and an NER head, in small
    windows, so files span several blocks and parts; long texts in token windows of 16
    tokens, at most 3 of them (so some rows are truncated)."""
    return EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        classify=(f"topic={tiny_multilabel_dir}",),
        zero_shot=("kind=good,bad,numbers",),
        ner=(f"people={tiny_token_classifier_dir}",),
        window_rows=16,
        max_length=18,
        long_text="window",
        window_overlap=4,
        max_windows=3,
        token_stats=True,
    )


def on_ray(config: EngineConfig) -> EngineConfig:
    return EngineConfig(**{**config.model_dump(), "executor": "ray"})


def write_source(root: Path, days: int = 3, files_per_day: int = 2, rows: int = 45) -> Path:
    """A hive-partitioned table with a user column named `path` (Ray's read_parquet would
    overwrite it) and a list column, in row groups of 10."""
    for day in range(1, days + 1):
        folder = root / f"date=2026-02-{day:02d}"
        folder.mkdir(parents=True)
        for part in range(files_per_day):
            texts = partition_texts(day * 10 + part, rows)
            ids = [f"{day}-{part}-{i}" for i in range(rows)]
            table = pa.table(
                {
                    "id": ids,
                    "text": pa.array(texts, pa.string()),
                    "path": [f"/logs/{i}.txt" for i in range(rows)],
                    "tags": [[f"t{i % 3}"] * (i % 3) for i in range(rows)],
                }
            )
            pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=10)
    return root


def test_ray_output_equals_local_and_bad_files_are_named(
    local_config, tmp_path: Path, monkeypatch
) -> None:
    """One Ray run over good files (several read chunks each) and two bad ones: the bad files
    are named, every good file is committed and equals the local executor's output."""
    import bertetl.executors.ray.executor

    monkeypatch.setattr(bertetl.executors.ray.executor, "READ_RANGE_ROWS", 20)  # 3 reads a file
    src = write_source(tmp_path / "src", days=3)
    truncated = src / "date=2026-02-03" / "part-1.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    corrupt = src / "date=2026-02-03" / "part-0.parquet"
    corrupt_page(corrupt, row_group=2)
    with pytest.raises(FilesFailedError) as failed:
        enrich(src, tmp_path / "ray", on_ray(local_config))
    failures = failed.value.failures
    assert set(failures) == {str(truncated), str(corrupt)}
    assert str(truncated) in failures[str(truncated)]
    assert str(corrupt) in failures[str(corrupt)]
    report = failed.value.report
    local = enrich(src, tmp_path / "local", local_config, raise_on_failure=False)
    assert set(local.failures) == set(failures)
    # the good files are committed, equal to the local executor's; the bad ones not at all
    assert assert_equivalent(tmp_path / "ray", tmp_path / "local") == 2 * 2 * 45
    assert not (tmp_path / "ray" / "date=2026-02-03").exists()
    assert (report.rows, report.rows_failed) == (local.rows, local.rows_failed)
    assert report.rows_failed >= 4  # at least a null and a blank text per good file
    assert report.label_counts == local.label_counts
    assert {"label", "topic_label", "kind_label"} <= set(report.label_counts)
    assert report.truncated_rows == local.truncated_rows > 0
    truncated = {f.source: f.rows_truncated for f in report.files if f.error is None}
    assert truncated == {f.source: f.rows_truncated for f in local.files if f.error is None}
    assert all(  # each file's mean embedding and mean score, as manifests keep them
        (r.embedding_sums["embedding"].count, r.score_sums["score"].count)
        == (o.embedding_sums["embedding"].count, o.score_sums["score"].count)
        and r.embedding_sums["embedding"].mean()
        == pytest.approx(o.embedding_sums["embedding"].mean(), abs=1e-4)
        and r.score_sums["score"].mean() == pytest.approx(o.score_sums["score"].mean(), abs=1e-5)
        for r, o in zip(report.files, local.files, strict=True)
        if r.error is None
    )
    assert staging_is_empty(tmp_path / "ray")


def corrupt_page(path: Path, row_group: int) -> None:
    """Overwrite a data page header of `row_group`: the footer still reads, the rows do not."""
    column = pq.read_metadata(path).row_group(row_group).column(0)
    with open(path, "r+b") as handle:
        handle.seek(column.data_page_offset)
        handle.write(b"\xff" * 16)


def model_actor_pids(pattern: str = r"MapBatches\(ModelActor\)") -> set[int]:
    """The model actors (or other processes matching `pattern`) of this session's Ray (its
    raylet is this process's child), never those of another Ray on the same machine."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split() if descends_from(int(pid), os.getpid())}


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def test_killed_model_actor_is_restarted_and_no_row_is_lost(local_config, tmp_path: Path) -> None:
    from bertetl.executors import Job, make_executor
    from bertetl.io.read import discover

    # 100 blocks of 8 rows: long enough to kill the actor mid-run (the first progress poll
    # kills it, after about a tenth of the rows), short enough for CI
    src = write_source(tmp_path / "src", days=2, files_per_day=1, rows=400)
    # the heads are covered above; a killed actor needs only rows to lose
    plain = local_config.model_copy(update={"classify": (), "zero_shot": (), "ner": ()})
    config = EngineConfig(**{**on_ray(plain).model_dump(), "window_rows": 8})
    files = discover(src)
    jobs = [Job(f, tmp_path / "ray" / f.relative, pq.read_schema(f.path)) for f in files]
    total = 2 * 400
    executor = make_executor(config)
    executor.setup()
    written, killed, seen = [0], [], set()
    running = threading.Event()

    def kill_first_actor() -> None:
        """Watch for the model actor and SIGKILL it once it has run a moment: a watcher of
        its own, so a busy machine's late progress polls cannot let the run end first."""
        first_seen: float | None = None
        while running.is_set() and not killed:
            pids = model_actor_pids()
            seen.update(pids)
            if pids and first_seen is None:
                first_seen = time.monotonic()
            if pids and first_seen is not None and time.monotonic() - first_seen >= 0.5:
                pid = min(pids)
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, written[0]))
            time.sleep(0.1)

    def on_rows(rows: int) -> None:  # the driver's progress poll
        written[0] += rows
        seen.update(model_actor_pids())

    (tmp_path / "scratch").mkdir()
    running.set()
    watcher = threading.Thread(target=kill_first_actor, daemon=True)
    watcher.start()
    try:
        results = executor.run_jobs(jobs, on_rows=on_rows, scratch=tmp_path / "scratch")
        finished_with = written[0]
    finally:
        running.clear()
        watcher.join()
    seen.update(model_actor_pids())
    assert killed, "the model actor was never seen running"
    pid, rows_at_kill = killed[0]
    assert rows_at_kill < finished_with == total  # killed mid-run, before the last rows
    assert seen - {pid}, "no restarted model actor was seen"
    assert [r.error for r in results] == [None] * len(jobs)
    assert sum(r.rows for r in results) == total
    ids = Counter(pq.read_table(tmp_path / "ray", columns=["id"]).column("id").to_pylist())
    assert len(ids) == total and set(ids.values()) == {1}  # every row once
    enrich(src, tmp_path / "local", EngineConfig(**{**plain.model_dump(), "window_rows": 8}))
    assert assert_equivalent(tmp_path / "ray", tmp_path / "local") == total


def test_without_ray_installed_a_one_line_hint(
    tiny_embed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bertetl.cli import app

    for name in [n for n in sys.modules if n.split(".")[0] == "ray" or "executors.ray" in n]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    src = write_source(tmp_path / "src", days=1, files_per_day=1, rows=10)
    command = ["enrich", str(src), str(tmp_path / "out"), "--text-column", "text"]
    command += ["--embed-model", str(tiny_embed_dir), "--executor", "ray"]
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "error: --executor ray needs the 'ray' extra: pip install 'bertetl[ray]'"
    )
    assert "Traceback" not in done.output
    assert not (tmp_path / "out").exists()


def test_ray_reads_an_s3_source_and_writes_an_s3_dest(
    tiny_embed_dir: Path, bucket: str, storage: dict, tmp_path: Path
) -> None:
    """Read tasks open the S3 objects through the source's filesystem, and commit tasks upload
    each output whole through the DEST's (both pickled with their options to wherever they
    run): S3 to local, then S3 to S3, each equal to the local executor's output, with no
    object but the outputs (no part, no temp file) on the store."""
    from bertetl.io.stores.locations import parse_location
    from tests.io.s3_server import ENVIRONMENT
    from tests.runs.test_object_store import download, objects, upload_tree

    src = write_source(tmp_path / "src", days=2, files_per_day=1, rows=30)
    upload_tree(src, parse_location(f"s3://{bucket}/src", storage))
    # the keys travel with the filesystem: Ray's workers were started before the S3 server
    options = storage | {
        "access_key": ENVIRONMENT["AWS_ACCESS_KEY_ID"],
        "secret_key": ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
    }
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), window_rows=16)
    report = enrich(f"s3://{bucket}/src", tmp_path / "ray", on_ray(config), storage_options=options)
    assert report.rows == 60 and not report.failures
    enrich(src, tmp_path / "local", config)
    assert assert_equivalent(tmp_path / "ray", tmp_path / "local") == 60

    dest = parse_location(f"s3://{bucket}/out", options)
    report = enrich(f"s3://{bucket}/src", dest.uri, on_ray(config), storage_options=options)
    assert report.rows == 60 and not report.failures
    assert {f.dest for f in report.files} == {
        f"{dest.uri}/date=2026-02-0{day}/part-0.parquet" for day in (1, 2)
    }
    assert sorted(objects(dest)) == [
        "date=2026-02-01/part-0.parquet",
        "date=2026-02-02/part-0.parquet",
    ]
    assert assert_equivalent(download(dest, tmp_path / "from-s3"), tmp_path / "local") == 60
    # each run's progress counters actor is gone with its run (its worker process too)
    deadline = time.monotonic() + 60  # Ray frees a killed actor's worker in its own time
    while model_actor_pids(r"ray::RunCounters") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not model_actor_pids(r"ray::RunCounters")


def test_parts_staged_on_this_machine_are_refused_on_a_cluster(tmp_path: Path) -> None:
    """An object-store or table DEST stages the parts on this machine: fine for one node,
    refused in one line for a cluster whose other nodes cannot reach them."""
    import tempfile

    from bertetl.errors import ExecutorError
    from bertetl.executors.ray.executor import check_shared_scratch
    from bertetl.io.stores.objects import LOCAL_STAGING

    machine = Path(tempfile.gettempdir()) / LOCAL_STAGING / "abc" / "run"
    check_shared_scratch(machine, nodes=1)
    check_shared_scratch(tmp_path / "beside-dest", nodes=3)  # a DEST's shared filesystem
    with pytest.raises(ExecutorError, match=r"other 2 node\(s\) cannot reach"):
        check_shared_scratch(machine, nodes=3)
