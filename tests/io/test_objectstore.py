"""`bertetl.io.stores.objects`'s own functions: whole-object uploads, small writes and deletes on
each real test store (S3 on moto, GCS on fake-gcs-server, Azure on Azurite; the `store`
fixture), the bucket check, this machine's local staging, and when a lock's holder is
certainly dead. The lock's protocol (lease, take-over) is in tests/io/test_object_store.py.

References: each store's own SDK (`tests.io.stores.Store`) for what is on the store, the
filesystem for staging, `/proc` and real child processes for `holder_is_dead`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bertetl.errors import CommitError
from bertetl.io.stores.locations import StorageError, parse_location
from bertetl.io.stores.objects import (
    LOCAL_STAGING,
    check_bucket,
    clean_local_staging,
    delete_objects,
    holder_is_dead,
    is_machine_staging,
    local_staged_folder,
    local_staging_root,
    put_bytes,
    upload_file,
)


def test_an_upload_lands_whole_and_replaces_the_object(store, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    (tmp_path / "out.parquet").write_bytes(payload)
    target = store.location("t/date=1/out.parquet")
    upload_file(tmp_path / "out.parquet", target)
    assert store.get("t/date=1/out.parquet") == payload
    (tmp_path / "out.parquet").write_bytes(b"shorter")
    upload_file(tmp_path / "out.parquet", target)
    assert store.get("t/date=1/out.parquet") == b"shorter"
    assert sorted(store.objects("t")) == ["date=1/out.parquet"]


def test_small_writes_and_deletes_touch_only_the_objects_named(store) -> None:
    manifest = json.dumps({"rows_out": 3}).encode()
    put_bytes(store.location("t/date=1/_manifest.json"), manifest)
    assert store.get("t/date=1/_manifest.json") == manifest
    for key in ("t/date=1/a.parquet", "t/date=1/b.parquet", "t/date=2/a.parquet"):
        store.put(key, b"x")
    doomed = [store.location("t/date=1/a.parquet"), store.location("t/date=1/_manifest.json")]
    assert delete_objects(doomed) == 2
    assert sorted(store.objects("t")) == ["date=1/b.parquet", "date=2/a.parquet"]
    assert delete_objects([]) == 0


def test_a_missing_bucket_is_named_before_any_work(s3_endpoint, bucket, storage) -> None:
    check_bucket(parse_location(f"s3://{bucket}/out", storage))  # there: no error
    missing = f"s3://no-such-{bucket}/out"
    with pytest.raises(StorageError, match=f"{missing}"):
        check_bucket(parse_location(missing, storage))


def _store_location(uri: str):
    return parse_location(uri, {"endpoint_url": "http://127.0.0.1:9"})  # no request is sent


def test_local_staging_is_one_folder_per_dest_under_the_temp_folder() -> None:
    one, other = _store_location("s3://b/out"), _store_location("s3://b/out2")
    root = local_staging_root(one)
    assert root == local_staging_root(_store_location("s3://b/out/"))  # the same DEST
    assert root != local_staging_root(other)
    assert root.parent == Path(tempfile.gettempdir()) / LOCAL_STAGING
    with local_staged_folder(one) as first, local_staged_folder(one) as second:
        assert first != second and first.parent == second.parent == root
        assert first.is_dir() and not any(first.iterdir())
        assert is_machine_staging(first) and is_machine_staging(first / "date=1")
        (first / "date=1").mkdir()
        (first / "date=1" / "part-0.parquet").write_bytes(b"staged")
    assert not first.exists() and not second.exists()  # removed on exit
    assert not root.exists()  # and no empty folder per DEST is left behind
    assert not is_machine_staging(Path(tempfile.gettempdir()))
    assert not is_machine_staging(Path.cwd())


def test_a_staged_folder_is_removed_when_the_commit_fails() -> None:
    dest = _store_location("s3://b/failing")
    with pytest.raises(CommitError, match="boom"), local_staged_folder(dest) as staged:
        (staged / "x").write_text("half")
        raise CommitError("boom")
    assert not staged.exists()


def test_cleaning_removes_what_a_killed_run_left_for_this_dest_only() -> None:
    dest, other = _store_location("s3://b/killed"), _store_location("s3://b/alive")
    for root in (local_staging_root(dest), local_staging_root(other)):
        (root / "left-1" / "date=1").mkdir(parents=True, exist_ok=True)
        (root / "left-1" / "date=1" / "part-0.parquet").write_bytes(b"x")
        (root / "left-2").mkdir(exist_ok=True)
    try:
        assert clean_local_staging(dest) == 2
        assert list(local_staging_root(dest).iterdir()) == []
        assert sorted(p.name for p in local_staging_root(other).iterdir()) == ["left-1", "left-2"]
        assert clean_local_staging(dest) == 0
        assert clean_local_staging(_store_location("s3://b/never")) == 0
    finally:
        clean_local_staging(other)


def _here(pid: int, **changes: object) -> dict[str, object]:
    """A lock holder's record for `pid` on this host, boot and pid namespace (read from
    /proc here, as a lock written on this machine would carry them)."""
    info: dict[str, object] = {
        "pid": pid,
        "host": socket.gethostname(),
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "pid_namespace": os.readlink("/proc/self/ns/pid"),
    }
    return {**info, **changes}


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="needs Linux /proc")
def test_a_holder_is_dead_only_when_its_pid_certainly_names_no_process() -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    gone = int(finished.stdout)  # exited and reaped
    assert holder_is_dead(_here(gone))
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            assert not holder_is_dead(_here(alive.pid))
        finally:
            alive.kill()
    assert not holder_is_dead(_here(os.getpid()))  # ourselves
    assert not holder_is_dead(_here(gone, host=socket.gethostname() + "-elsewhere"))
    assert not holder_is_dead(_here(gone, boot_id="another boot"))
    assert not holder_is_dead(_here(gone, pid_namespace="pid:[1]"))
    assert not holder_is_dead({**_here(gone), "pid": str(gone)})  # not a pid
    assert not holder_is_dead(_here(0))
    assert not holder_is_dead({"pid": gone})  # nothing says where it ran
