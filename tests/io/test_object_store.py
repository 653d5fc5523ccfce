"""Object storage at the io layer, against a real S3-compatible server (moto on loopback):
locations and options, discovery, whole-object writes, the lock with its lease."""

from __future__ import annotations

import json
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.errors import CommitError, InputError
from bertetl.io.read import discover, read_schema, stream
from bertetl.io.scratch import HELD, scratch_root
from bertetl.io.stores.locations import StorageError, parse_location, parse_storage_options
from bertetl.io.stores.objects import LOCK_NAME, ObjectStoreLock
from bertetl.io.write import ParquetSink


def test_locations_and_options(storage) -> None:
    local = parse_location("some/folder")
    assert local.local and local.path == "some/folder"
    remote = parse_location("s3://bucket/a/b/", storage)
    assert not remote.local and (remote.bucket, remote.key) == ("bucket", "a/b")
    assert (remote / "c=1/x.parquet").uri == "s3://bucket/a/b/c=1/x.parquet"
    assert parse_storage_options(["endpoint_url=http://h:1", "region=eu"]) == {
        "endpoint_url": "http://h:1",
        "region": "eu",
    }
    with pytest.raises(StorageError, match="KEY=VALUE"):
        parse_storage_options(["endpoint_url"])
    with pytest.raises(StorageError, match=r"not an option of s3://bucket/x.*endpoint_url"):
        parse_location("s3://bucket/x", {"endpint_url": "x"})
    with pytest.raises(StorageError, match="local path"):
        parse_location("some/folder", storage)
    with pytest.raises(StorageError, match="unsupported storage scheme 'nosuch'"):
        parse_location("nosuch://bucket/x")
    # a known scheme whose filesystem refuses its options: what it said, naming the URI
    with pytest.raises(StorageError, match=r"^cannot open abfs://container/x: .*account_name"):
        parse_location("abfs://container/x")


def test_discover_and_stream_hive_objects(store) -> None:
    table = pa.table({"id": list(range(30)), "text": [f"t{i}" for i in range(30)]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=10)
    for key in ("t/date=1/a.parquet", "t/date=2/b.parquet", "t/_hidden/c.parquet", "t/.x.parquet"):
        store.put(key, sink.getvalue().to_pybytes())

    files = discover(store.location("t"))
    assert [(f.relative, f.partition) for f in files] == [
        ("date=1/a.parquet", {"date": "1"}),
        ("date=2/b.parquet", {"date": "2"}),
    ]
    assert files[0].path == store.uri("t/date=1/a.parquet")
    assert read_schema(files[0]) == table.schema
    batches = list(stream(files[1], 7))
    assert pa.Table.from_batches(batches).equals(table)
    inside = discover(store.location("t/date=2"))
    assert [(f.relative, f.partition) for f in inside] == [("date=2/b.parquet", {"date": "2"})]
    globbed = discover(store.location("t/*/a.parquet"))
    assert [f.relative for f in globbed] == ["date=1/a.parquet"]
    with pytest.raises(InputError, match=f"{store.uri('nothing')} does not exist"):
        discover(store.location("nothing"))


def test_a_discovered_file_is_on_the_store_its_uri_names(store) -> None:
    """A source file's `Location` names the same store as the URI it was found under (`gcs`
    for `gs://`, `azure` for `abfs://`), so the per-partition overlap check compares it with
    DEST as one store (it once named `gs://` files' store `gs`, and passed them as two)."""
    from bertetl.io.partitions import Partition
    from bertetl.io.run_checks import check_partition_paths

    store.put("t/date=1/a.parquet", _parquet_bytes(pa.table({"text": ["a"]})))
    source = store.location("t")
    (file,) = discover(source)
    assert file.location.store == source.store and file.location.is_relative_to(source)
    partition = Partition("date", "1", "date=1", (file,))
    with pytest.raises(InputError, match="lies inside SOURCE"):
        check_partition_paths(partition, store.location("t/out"))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_sink_uploads_whole_objects_or_nothing(store) -> None:
    target = store.location("out/part-0.parquet")
    table = pa.table({"x": list(range(100))})
    with ParquetSink(target, table.schema) as sink:
        sink.write(table.to_batches()[0])
        assert not target.exists()  # nothing visible before commit
        # written locally in a scratch folder that the next run removes if this one is killed
        assert sink.temp_path.parent.parent == scratch_root()
        assert (sink.temp_path.parent / HELD).exists()
    assert not sink.temp_path.parent.exists()
    with target.open_input_file() as handle:
        assert pq.read_table(handle).equals(table)

    with pytest.raises(RuntimeError), ParquetSink(target, table.schema) as sink:
        sink.write(table.slice(0, 10).to_batches()[0])
        raise RuntimeError("the engine failed")
    with target.open_input_file() as handle:
        assert pq.read_table(handle).equals(table)  # the committed object is untouched
    assert not sink.temp_path.parent.exists()


def test_the_lock_refuses_a_second_run_and_takes_over_an_expired_lease(store) -> None:
    dest = store.location("dest")
    with ObjectStoreLock(dest) as first:
        with pytest.raises(CommitError, match=f"another bertetl run is writing {dest.uri}"):
            ObjectStoreLock(dest).acquire()
        first.renew()  # a heartbeat: a write conditional on its own version
        first.check()
    assert store.objects("dest") == {}  # released

    dead = {"owner": "x", "pid": 1, "host": "gone", "since": 0, "expires": time.time() - 1}
    store.put(f"dest/{LOCK_NAME}", json.dumps(dead).encode())
    lock = ObjectStoreLock(dest)
    lock.acquire()  # a killed run's lease ran out: taken over
    held = json.loads(store.get(f"dest/{LOCK_NAME}"))
    assert held["owner"] == lock.owner and held["expires"] > time.time()
    lock.renew()
    lock.check()

    # Another run took it over after our lease ran out: our next heartbeat finds its version
    # changed, so the lock is lost and nothing more may be committed.
    store.put(f"dest/{LOCK_NAME}", json.dumps({**dead, "owner": "other"}).encode())
    lock.renew()
    with pytest.raises(CommitError, match="lost the lock"):
        lock.check()
    lock.release()  # not ours any more: left in place
    assert json.loads(store.get(f"dest/{LOCK_NAME}"))["owner"] == "other"


def test_a_lock_write_that_landed_before_its_retry_failed_is_still_ours(store, monkeypatch) -> None:
    """A client retries a conditional write whose answer was lost: the write landed, so the
    retry's precondition fails. The lock reads its holder: its own owner id means the lock is
    ours (taking it, and renewing it), not another run's."""
    from bertetl.io.stores import objects as objectstore

    dest = store.location("dest")
    real = objectstore.client(dest)

    class AnswerLost:
        def __getattr__(self, name: str):
            return getattr(real, name)

        def put(self, target, data, **condition):
            real.put(target, data, **condition)  # it reached the store ...
            return None  # ... but the retry was refused: as a precondition failure

    monkeypatch.setattr(objectstore, "client", lambda location: AnswerLost())
    lock = ObjectStoreLock(dest)
    lock.acquire()
    assert json.loads(store.get(f"dest/{LOCK_NAME}"))["owner"] == lock.owner
    lock.renew()
    lock.check()  # not lost: the renewal was ours
    monkeypatch.undo()
    lock.release()
    assert store.objects("dest") == {}


def test_a_lease_not_renewed_in_time_stops_the_commits(store, monkeypatch) -> None:
    """The heartbeat could not reach the store for longer than the lease (less a margin):
    another run may have taken the lock over by now, so nothing more may be committed, and
    the lock is not deleted on release (it may be theirs)."""
    import types

    from bertetl.io.stores import objects as objectstore

    dest = store.location("dest")
    lock = ObjectStoreLock(dest)
    lock.acquire()
    lock.check()  # freshly written: valid
    real = time.monotonic
    later = types.SimpleNamespace(time=time.time, monotonic=lambda: real() + lock.lease_seconds)
    monkeypatch.setattr(objectstore, "time", later)
    with pytest.raises(CommitError, match=r"lost the lock .* not renewed"):
        lock.check()
    monkeypatch.undo()
    lock.release()
    assert LOCK_NAME in store.objects("dest")


def test_a_killed_runs_lock_on_this_machine_is_taken_over_before_its_lease_ends(
    bucket, storage
) -> None:
    """A holder that ran here (same host, boot and pid namespace) under a pid that no longer
    exists is certainly dead: taken over at once. A live holder, or one elsewhere with the
    same pid, keeps the lock until its lease ends."""
    import socket
    import subprocess
    import sys

    from bertetl.io.stores.objects import _process_space

    dest = parse_location(f"s3://{bucket}/dest", storage)
    s3 = boto3.client("s3", endpoint_url=storage["endpoint_url"])
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    here = {"host": socket.gethostname(), **_process_space()}
    lease = {"owner": "x", "since": time.time(), "expires": time.time() + 600}

    def held_by(**info) -> None:
        body = json.dumps({**lease, **info}).encode()
        s3.put_object(Bucket=bucket, Key=f"dest/{LOCK_NAME}", Body=body)

    try:
        for alive_or_elsewhere in (
            {**here, "pid": sleeper.pid},  # alive
            {**here, "pid": int(finished.stdout), "host": "another-machine"},
            {**here, "pid": int(finished.stdout), "boot_id": "another-boot"},
            {**here, "pid": int(finished.stdout), "pid_namespace": "pid:[1]"},
        ):
            held_by(**alive_or_elsewhere)
            with pytest.raises(CommitError, match="another bertetl run is writing"):
                ObjectStoreLock(dest).acquire()
        held_by(**here, pid=int(finished.stdout))  # this machine, the process is gone
        with ObjectStoreLock(dest) as lock:
            held = json.loads(s3.get_object(Bucket=bucket, Key=f"dest/{LOCK_NAME}")["Body"].read())
            assert held["owner"] == lock.owner
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dest_on_a_store_without_a_lock_is_refused_by_name() -> None:
    """fsspec reaches more stores than bertetl can lock (here its in-memory one): they can be
    a SOURCE, and a DEST there is one line naming it and the stores that work."""
    from bertetl.io.stores.objects import writable

    dest = parse_location("memory://bucket/x")
    assert dest.store == "memory" and not dest.local
    with pytest.raises(StorageError, match=r"DEST memory://bucket/x: .*s3://, gs:// and abfs://"):
        writable(dest)


def test_an_azure_dest_without_an_account_names_its_uri(monkeypatch) -> None:
    """Reads may work from `AZURE_STORAGE_CONNECTION_STRING` alone; so do writes (the same
    chain as adlfs), and without any account the DEST's error names it."""
    import pyarrow.fs as pafs

    from bertetl.io.stores import clients as object_clients
    from bertetl.io.stores.locations import Location

    for name in ("CONNECTION_STRING", "ACCOUNT_NAME"):
        monkeypatch.delenv(f"AZURE_STORAGE_{name}", raising=False)
    dest = Location("abfs://container/x", "container/x", pafs.LocalFileSystem(), "azure")
    with pytest.raises(StorageError, match=r"^DEST abfs://container/x needs .*account_name"):
        object_clients.client(dest)
    connection = (
        "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;BlobEndpoint=http://h/a;"
    )
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    try:
        assert object_clients.client(dest).service.account_name == "a"
    finally:  # clients are cached by options: this one must not outlive the variable
        object_clients._CLIENTS["azure"].cache_clear()


def test_an_adls_gen2_uri_names_its_container_and_account() -> None:
    """`abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH`, the form Spark and Databricks
    write: the writer's container is CONTAINER and its account ACCOUNT."""
    import pyarrow.fs as pafs

    from bertetl.io.stores import clients as object_clients
    from bertetl.io.stores.locations import Location

    path = "lake@myacct.dfs.core.windows.net/enriched/x.parquet"
    target = Location(f"abfss://{path}", path, pafs.LocalFileSystem(), "azure", (("anon", "1"),))
    assert object_clients.azure_account(target) == "myacct"
    try:
        blob = object_clients.client(target)._blob(target)  # type: ignore[attr-defined]
        assert (blob.account_name, blob.container_name) == ("myacct", "lake")
        assert blob.blob_name == "enriched/x.parquet"
    finally:
        object_clients._CLIENTS["azure"].cache_clear()
