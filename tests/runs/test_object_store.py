"""Runs into and out of real S3- and GCS-compatible servers (moto, fake-gcs-server, on
loopback), through the same code path as the clouds (`--storage-option endpoint_url=...`),
checked against local runs of the same input and read back as a manifest-following reader."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bertetl.cli.app import app
from bertetl.config import EngineConfig
from bertetl.errors import CommitError, InputError
from bertetl.executors.local import LocalExecutor
from bertetl.io.commit import LOCK_NAME as LOCK
from bertetl.io.manifest import MANIFEST_NAME
from bertetl.io.stores.locations import Location, parse_location
from bertetl.reports.summary import summarize
from bertetl.runs.enrich import enrich
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import check_partitioned_run, enrich_partition
from tests.io.s3_server import dead_endpoint
from tests.io.stores import objects
from tests.outputs import assert_equivalent, edit_rows


@pytest.fixture
def config(tiny_embed_dir: Path, tiny_classifier_dir: Path) -> EngineConfig:
    return EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        prefetch_windows=0,
    )


@pytest.fixture
def executor(config: EngineConfig):
    executor = LocalExecutor(config)
    executor.setup()
    yield executor
    executor.teardown()


def upload_tree(local: Path, target: Location) -> None:
    """Copy a local file or folder to the store, file by file (as a user's
    `aws s3 cp --recursive` or `gcloud storage cp -r` would)."""
    if local.is_file():
        with target.fs.open_output_stream(target.path) as out:
            out.write(local.read_bytes())
        return
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        with target.fs.open_output_stream(f"{target.path}/{path.relative_to(local)}") as out:
            out.write(path.read_bytes())


def download(source: Location, local: Path) -> Path:
    """Every object under `source` into `local` (hidden ones too; folders made here, since a
    GCS listing has no folder entries for `copy_files` to make)."""
    selector = pafs.FileSelector(source.path, recursive=True)
    for info in source.fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            target = local / info.path[len(source.path) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            with source.fs.open_input_stream(info.path) as stream:
                target.write_bytes(stream.read())
    return local


def read_by_manifests(dest: Location) -> pa.Table:
    """What a reader that follows the manifests sees: for each `_manifest.json`, the outputs
    it lists (and nothing else)."""
    tables = []
    for name in sorted(objects(dest)):
        if not name.endswith(MANIFEST_NAME):
            continue
        folder = dest / name.rsplit("/", 1)[0]
        manifest = json.loads((folder / MANIFEST_NAME).read_bytes())
        for output in manifest["outputs"]:
            with (folder / output).open_input_file() as handle:
                table = pq.read_table(handle)
            value = pa.array([manifest["partition"]] * table.num_rows)
            tables.append(table.append_column("date", value))
    return pa.concat_tables(tables) if tables else pa.table({})


def run_all(executor: LocalExecutor, src, dest: Location) -> dict[str, object]:
    """Check, plan and enrich every partition that needs it (the backfill flow's steps,
    without Prefect); manifests by partition value."""
    partitions = check_partitioned_run(src, dest, "date")
    plan = plan_partitions(src, dest, "date", executor.config, partitions=partitions)
    return {
        item.value: enrich_partition(executor, item, dest, plan)
        for item in plan.by_action("enrich")
    }


def test_enrich_to_the_store_and_from_it_equals_a_local_run(
    config, partitioned_source, store, tmp_path: Path
) -> None:
    src = partitioned_source(days=2, files_per_day=2)
    enrich(src, tmp_path / "reference", config)

    report = enrich(src, store.uri("from-local"), config, storage_options=store.options)
    assert report.rows == 2 * 24 and not report.failures
    assert all(f.dest.startswith(store.uri("from-local/")) for f in report.files)

    remote_src = parse_location(store.uri("src"), store.options)
    upload_tree(src, remote_src)
    enrich(store.uri("src"), store.uri("from-store"), config, storage_options=store.options)

    for name in ("from-local", "from-store"):
        dest = store.location(name)
        assert sorted(objects(dest)) == [
            f"date=2026-01-0{d}/part-{k}.parquet" for d in (1, 2) for k in (0, 1)
        ]  # the lock is released, nothing staged or half-written is left
        local = download(dest, tmp_path / name)
        assert assert_equivalent(local, tmp_path / "reference") == 2 * 24


def test_backfill_then_incremental_reenriches_only_the_edited_partition(
    executor, partitioned_source, store, tmp_path: Path
) -> None:
    src = partitioned_source(days=3)
    dest = parse_location(store.uri("enriched"), store.options)
    manifests = run_all(executor, src, dest)
    assert sorted(manifests) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    before = objects(dest)
    assert plan_partitions(src, dest, "date", executor.config).by_action("enrich") == []

    edit_rows(src / "date=2026-01-02" / "part-0.parquet", [0, 5, 20])
    plan = plan_partitions(src, dest, "date", executor.config)
    assert [(p.value, p.action) for p in plan.partitions] == [
        ("2026-01-01", "skip"),
        ("2026-01-02", "enrich"),
        ("2026-01-03", "skip"),
    ]
    edited = run_all(executor, src, dest)["2026-01-02"]
    assert (edited.rows_inferred, edited.rows_reused, edited.rows_failed) == (3, 19, 2)
    after = objects(dest)
    for day in ("01", "03"):  # untouched: same objects, same ETags
        for name in (f"date=2026-01-{day}/part-0.parquet", f"date=2026-01-{day}/{MANIFEST_NAME}"):
            assert after[name] == before[name]
    assert after["date=2026-01-02/part-0.parquet"] != before["date=2026-01-02/part-0.parquet"]

    enrich(src, tmp_path / "reference", executor.config)  # a clean run over the edited input
    local = download(dest, tmp_path / "downloaded")
    assert assert_equivalent(local, tmp_path / "reference") == 3 * 24
    tables = summarize(dest, "date")
    assert "damaged" not in tables
    assert tables["rows"]["rows"].sum() == 3 * 24
    options = [f"--storage-option={key}={value}" for key, value in store.options.items()]
    result = CliRunner().invoke(app, ["summary", dest.uri, "--partition-column", "date", *options])
    assert result.exit_code == 0, result.stderr
    assert "2026-01-02" in result.stdout and "look at" in result.stdout


def test_a_crash_mid_commit_leaves_no_duplicates_and_the_rerun_cleans_up(
    executor, partitioned_source, store, tmp_path: Path, monkeypatch
) -> None:
    """A run that dies after some objects of a partition are uploaded: a reader following
    the manifests never sees a row twice (the partition is uncommitted meanwhile), and the
    rerun removes the stale output of a source file that is gone."""
    src = partitioned_source(days=2, files_per_day=2)
    dest = parse_location(store.uri("enriched"), store.options)
    run_all(executor, src, dest)
    (src / "date=2026-01-02" / "part-1.parquet").unlink()  # its output becomes stale
    edit_rows(src / "date=2026-01-02" / "part-0.parquet", [1])

    import bertetl.io.stores.objects as objectstore

    real_upload = objectstore.upload_file

    def crash_after_first(local: Path, target: Location) -> None:
        real_upload(local, target)
        raise KeyboardInterrupt("killed mid-commit")

    monkeypatch.setattr(objectstore, "upload_file", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_all(executor, src, dest)
    monkeypatch.setattr(objectstore, "upload_file", real_upload)

    seen = read_by_manifests(dest)  # the crashed partition is uncommitted, not mixed
    assert set(seen.column("date").to_pylist()) == {"2026-01-01"}
    assert seen.num_rows == 24 and len(set(seen.column("id").to_pylist())) == 24

    rerun = run_all(executor, src, dest)
    assert list(rerun) == ["2026-01-02"] and rerun["2026-01-02"].outputs == ["part-0.parquet"]
    assert "date=2026-01-02/part-1.parquet" not in objects(dest)  # stale: removed
    seen = read_by_manifests(dest)
    keys = list(zip(seen.column("date").to_pylist(), seen.column("id").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 24 + 12  # every row once; part-1 of day 2 is gone

    enrich(src, tmp_path / "reference", executor.config)
    assert assert_equivalent(download(dest, tmp_path / "downloaded"), tmp_path / "reference")


def test_foreign_objects_are_never_removed(executor, partitioned_source, store) -> None:
    src = partitioned_source(days=1)
    dest = parse_location(store.uri("enriched"), store.options)
    run_all(executor, src, dest)
    store.put("enriched/date=2026-01-01/notes.txt", b"mine")
    with pytest.raises(InputError, match=r"notes\.txt"):
        check_partitioned_run(src, dest, "date")
    assert "date=2026-01-01/notes.txt" in objects(dest)


def test_a_copy_of_an_output_under_another_name_is_foreign_and_kept(
    executor, partitioned_source, store
) -> None:
    """A Parquet file with an `enrich_error` column that a user copied into a partition
    folder under another name is not bertetl's: a --force backfill is refused naming it (as
    in a local DEST), and it is still there, byte for byte."""
    src = partitioned_source(days=1)
    dest = parse_location(store.uri("enriched"), store.options)
    run_all(executor, src, dest)
    copy = store.get("enriched/date=2026-01-01/part-0.parquet")
    store.put("enriched/date=2026-01-01/backup-of-part-0.parquet", copy)
    with pytest.raises(InputError, match=r"backup-of-part-0\.parquet"):
        check_partitioned_run(src, dest, "date")
    plan = plan_partitions(src, dest, "date", executor.config, force=True)
    with pytest.raises(InputError, match=r"backup-of-part-0\.parquet"):
        enrich_partition(executor, plan.partitions[0], dest, plan)
    assert store.get("enriched/date=2026-01-01/backup-of-part-0.parquet") == copy


def test_enrich_refuses_an_object_it_did_not_write_at_an_output_key(
    config, partitioned_source, store
) -> None:
    src = partitioned_source(days=1, files_per_day=2)
    store.put("out/date=2026-01-01/part-1.parquet", b"the user's own object")
    with pytest.raises(InputError, match=r"1 file\(s\) bertetl did not write .*part-1\.parquet"):
        enrich(src, store.uri("out"), config, storage_options=store.options)
    assert list(objects(store.location("out"))) == ["date=2026-01-01/part-1.parquet"]  # kept
    enrich(src, store.uri("out2"), config, storage_options=store.options)
    enrich(src, store.uri("out2"), config, storage_options=store.options)  # its own: replaced


def test_a_bad_file_on_the_store_fails_only_its_partition(
    executor, partitioned_source, store
) -> None:
    src = partitioned_source(days=3)
    (src / "date=2026-01-02" / "part-0.parquet").write_bytes(b"not parquet at all")
    remote_src = parse_location(store.uri("src"), store.options)
    upload_tree(src, remote_src)
    dest = parse_location(store.uri("enriched"), store.options)
    plan = plan_partitions(remote_src, dest, "date", executor.config)
    outcomes: dict[str, str] = {}
    for item in plan.by_action("enrich"):
        try:
            enrich_partition(executor, item, dest, plan)
            outcomes[item.value] = "committed"
        except InputError as e:
            outcomes[item.value] = str(e)
    assert outcomes["2026-01-01"] == outcomes["2026-01-03"] == "committed"
    assert (
        f"{store.scheme}://" in outcomes["2026-01-02"]
        and "part-0.parquet" in outcomes["2026-01-02"]
    )
    assert not any(name.startswith("date=2026-01-02/") for name in objects(dest))


def test_cli_errors_for_a_missing_bucket_or_a_dead_endpoint_are_one_line(
    tiny_embed_dir: Path, partitioned_source, storage
) -> None:
    src = partitioned_source(days=1)
    runner = CliRunner()
    model = ["--text-column", "text", "--embed-model", str(tiny_embed_dir)]
    missing = "s3://no-such-bucket-here/out"
    result = runner.invoke(
        app,
        [
            "enrich",
            str(src),
            missing,
            *model,
            "--storage-option",
            f"endpoint_url={storage['endpoint_url']}",
        ],
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and "does not exist" in lines[0]

    dead = dead_endpoint()  # a store that is down
    result = runner.invoke(
        app,
        [
            "enrich",
            "s3://some-bucket/src",
            str(src.parent / "out"),
            *model,
            "--storage-option",
            f"endpoint_url={dead}",
            "--storage-option",
            "connect_timeout=1",
        ],
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "s3://some-bucket/src" in lines[0]

    result = runner.invoke(
        app, ["enrich", str(src), str(src.parent / "x"), *model, "--storage-option", "oops"]
    )
    assert result.exit_code == 1 and "KEY=VALUE" in result.stderr


def test_cli_into_gcs_names_a_missing_bucket_then_enriches(
    tiny_embed_dir: Path, partitioned_source, gcs_endpoint: str, tmp_path: Path
) -> None:
    """`bertetl enrich ... gs://...` with the options a user gives for a private endpoint: a
    missing bucket is one line naming it; an existing one gets every row, equal to a local
    run."""
    from tests.io import gcs_server

    src = partitioned_source(days=2)
    model = ["--text-column", "text", "--embed-model", str(tiny_embed_dir)]
    options = ["--storage-option", f"endpoint_url={gcs_endpoint}", "--storage-option",
               "anonymous=true"]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, ["enrich", str(src), "gs://no-such-bucket/out", *model, *options])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "gs://no-such-bucket/out" in lines[0]
    assert "does not exist" in lines[0]

    bucket = gcs_server.new_bucket(gcs_endpoint)
    result = runner.invoke(app, ["enrich", str(src), f"gs://{bucket}/out", *model, *options])
    assert result.exit_code == 0, result.stderr
    dest = parse_location(f"gs://{bucket}/out", {"endpoint_url": gcs_endpoint, "anonymous": "true"})
    assert sorted(objects(dest)) == [f"date=2026-01-0{d}/part-0.parquet" for d in (1, 2)]
    runner.invoke(app, ["enrich", str(src), str(tmp_path / "reference"), *model])
    assert assert_equivalent(download(dest, tmp_path / "got"), tmp_path / "reference") == 2 * 24


def test_a_dest_inside_the_source_is_refused_on_every_store(
    executor, partitioned_source, store
) -> None:
    """A run never writes into its input: on every store, the partitioned check refuses a
    DEST inside SOURCE before anything is written."""
    remote_src = store.location("src")
    upload_tree(partitioned_source(days=1), remote_src)
    with pytest.raises(InputError, match=r"DEST .*/src/enriched lies inside SOURCE"):
        check_partitioned_run(remote_src, store.location("src/enriched"), "date")
    assert sorted(objects(remote_src)) == ["date=2026-01-01/part-0.parquet"]  # nothing written


def test_a_lost_lock_stops_the_commit(executor, partitioned_source, store) -> None:
    """A run whose lease ran out and was taken over by another run commits nothing more."""
    from bertetl.io.stores.objects import ObjectStoreLock

    src = partitioned_source(days=1)
    dest = parse_location(store.uri("enriched"), store.options)
    lock = ObjectStoreLock(dest)
    lock.acquire()
    try:
        other = {"owner": "other", "pid": 2, "host": "elsewhere", "since": 0, "expires": 1e12}
        store.put(f"enriched/{LOCK}", json.dumps(other).encode())
        lock.renew()  # the heartbeat finds the lock taken over
        with pytest.raises(CommitError, match="lost the lock"):
            run_all(executor, src, dest)
    finally:
        lock.release()
    assert objects(dest) == {LOCK: objects(dest)[LOCK]}  # nothing committed; theirs is kept


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_backfill_and_incremental_flows_into_s3(
    tiny_embed_dir: Path, partitioned_source, bucket, storage, tmp_path: Path
) -> None:
    """The Prefect flows with `storage_options`: backfill, a rerun that skips, an edit that
    re-infers only the edited rows; a second run while the lock is held is refused."""
    from bertetl.flows.params import BackfillParams, IncrementalParams, RunOptions
    from bertetl.flows.partitioned import backfill_flow, incremental_flow
    from bertetl.io.stores.objects import ObjectStoreLock

    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    src, uri = partitioned_source(days=3), f"s3://{bucket}/enriched"
    common = {
        "source": str(src),
        "dest": uri,
        "partition_column": "date",
        "engine": config,
        "run": RunOptions(retries=0, retry_delay_seconds=0),
        "storage_options": storage,
    }
    rows = backfill_flow(BackfillParams(**common))
    assert [r["status"] for r in rows] == ["committed"] * 3
    assert [r["status"] for r in backfill_flow(BackfillParams(**common))] == ["skipped"] * 3
    dest = parse_location(uri, storage)
    assert ".bertetl-reports/drift.png" in objects(dest)  # the plot, uploaded

    edit_rows(src / "date=2026-01-03" / "part-0.parquet", [2, 4, 6])
    with ObjectStoreLock(dest), pytest.raises(CommitError, match="another bertetl run"):
        incremental_flow(IncrementalParams(**common))
    rows = {r["partition"]: r for r in incremental_flow(IncrementalParams(**common))}
    assert rows["2026-01-03"]["status"] == "committed" and rows["2026-01-03"]["inferred"] == 3
    assert rows["2026-01-01"]["status"] == rows["2026-01-02"]["status"] == "skipped"
    enrich(src, tmp_path / "reference", config)
    assert assert_equivalent(download(dest, tmp_path / "downloaded"), tmp_path / "reference")


def test_an_executor_without_object_storage_is_refused_before_any_work() -> None:
    """`check_storage` reads `Capabilities.object_storage` (local and Ray have it; a new
    executor may not): an s3:// SOURCE or DEST for one without it is one line naming it."""
    from types import SimpleNamespace

    from bertetl.errors import ExecutorError
    from bertetl.executors.base import Capabilities
    from bertetl.runs.enrich import check_storage

    config = EngineConfig(text_column="text", embed_model="minilm", executor="ray")
    options = {"endpoint_url": "http://127.0.0.1:9"}  # never reached: the check comes first
    source, dest = (parse_location(f"s3://bucket/{name}", options) for name in ("in", "out"))
    for capable in (True, False):
        executor = SimpleNamespace(
            capabilities=Capabilities(reuses_rows=False, object_storage=capable), config=config
        )
        check_storage(executor, "/data/in", "/data/out")
        for pair, remote in (((source, "/data/out"), source), (("/data/in", dest), dest)):
            if capable:
                check_storage(executor, *pair)
                continue
            with pytest.raises(ExecutorError, match=f"{remote}: --executor ray does not read"):
                check_storage(executor, *pair)
