"""Writing to an object store (S3): whole objects, deletes of bertetl's own objects, and the
one-run-per-DEST lock as a conditional create with a lease.

Object stores have no rename, so the local staged swap (`bertetl.io.commit`) cannot apply.
What holds instead (docs/STORAGE.md):

- each object is uploaded whole from a local file: one `PutObject` below the multipart
  threshold, else a multipart upload that S3 makes visible only once completed (and that
  boto3's transfer manager aborts on a failure). A reader sees the old object or the new one;
- a partition's `_manifest.json` is written last (one `PutObject`): it is the commit point
  (`bertetl.runs.staged` orders the steps);
- the lock is `DEST/.bertetl.lock`, created with `PutObject(IfNoneMatch='*')`, so two runs
  never both hold it; it carries a lease that a heartbeat thread renews with
  `PutObject(IfMatch=<our ETag>)`; a lease that ran out (a killed run) is taken over with
  `PutObject(IfMatch=<its ETag>)`, so of two runs taking it over only one wins. A lock
  whose holder certainly is gone (same host, kernel boot and pid namespace, no such pid) is
  taken over the same way at once (`holder_is_dead`).

Writes go through boto3 (the `s3` extra), reads through pyarrow's S3 filesystem; both take
credentials from the standard AWS chain. Other stores (`gs://`, `abfs://`) are read-only
here: a DEST there is refused with a message (`writable`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from bertetl.errors import CommitError
from bertetl.io.storage import EXTRAS, LOCK_NAME, Location, StorageError, storage_error

log = logging.getLogger(__name__)

#: How long a lock stays valid without a heartbeat; a run killed without releasing it
#: blocks DEST at most this long. The heartbeat renews it every third of it.
LEASE_SECONDS = 120.0
#: Local folder (under the system's temp folder) where object-store runs stage partitions.
LOCAL_STAGING = "bertetl-staging"


def writable(location: Location) -> None:
    """Refuse (`StorageError`) a DEST on a store bertetl cannot lock or write whole."""
    if location.store != "s3":
        raise StorageError(
            f"DEST {location.uri}: bertetl writes object storage on s3:// only (its lock needs "
            f"a conditional create); {location.store} can be a SOURCE; write to s3:// or a "
            "local folder"
        )
    client(location)  # a missing boto3 fails here, before any work


_BOTO_NAMES = {
    "endpoint_url": "endpoint_url",
    "endpoint_override": "endpoint_url",
    "region": "region_name",
    "region_name": "region_name",
    "access_key": "aws_access_key_id",
    "aws_access_key_id": "aws_access_key_id",
    "secret_key": "aws_secret_access_key",
    "aws_secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "aws_session_token": "aws_session_token",
}


@cache
def _client(options: tuple[tuple[str, str], ...]) -> Any:
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {}
    for key, value in options:
        name = _BOTO_NAMES.get(key)
        if name == "endpoint_url" and "://" not in value:
            value = f"https://{value}"
        if name:
            kwargs[name] = value
    if dict(options).get("anonymous", "").lower() in ("1", "true", "yes", "on"):
        from botocore import UNSIGNED

        kwargs["config"] = Config(signature_version=UNSIGNED)
    return boto3.session.Session().client("s3", **kwargs)


def client(location: Location) -> Any:
    """A boto3 S3 client for `location`'s storage options (cached per options)."""
    try:
        return _client(location.options)
    except ImportError as e:
        extra, package = EXTRAS["s3"]
        raise StorageError(
            f"writing {location.uri} needs {package}: pip install 'bertetl[{extra}]'"
        ) from e


def _error_code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _s3_call(location: Location, doing: str, call: Any, **kwargs: Any) -> Any:
    """One boto3 call; client errors as one-line `CommitError`s naming the URI."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(Bucket=location.bucket, **kwargs)
    except (ClientError, BotoCoreError) as e:
        raise CommitError(str(storage_error(location, doing, e))) from e


def check_bucket(location: Location) -> None:
    """Fail early, in one line naming the URI, when DEST's bucket is missing or not ours."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client(location).head_bucket(Bucket=location.bucket)
    except ClientError as e:
        code = _error_code(e)
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(
                f"DEST {location.uri}: bucket {location.bucket!r} does not exist; create it "
                "or fix the URI (and --storage-option endpoint_url)"
            ) from e
        raise storage_error(location, "cannot write", e) from e
    except BotoCoreError as e:
        raise storage_error(location, "cannot reach", e) from e


def upload_file(local: Path, target: Location) -> None:
    """Upload a local file whole to `target` (one PUT, or a multipart upload completed only
    when every part is in; aborted on a failure), then check the size S3 reports."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = client(target)
    try:
        s3.upload_file(
            str(local), target.bucket, target.key, Config=TransferConfig(use_threads=False)
        )
        size = s3.head_object(Bucket=target.bucket, Key=target.key)["ContentLength"]
    except (ClientError, BotoCoreError, OSError) as e:
        raise CommitError(str(storage_error(target, "cannot upload", e))) from e
    if size != local.stat().st_size:
        raise CommitError(f"{target.uri}: uploaded {size} bytes of {local.stat().st_size}")


def put_bytes(target: Location, data: bytes) -> None:
    """Write a small object (a manifest) with one `PutObject`."""
    _s3_call(target, "cannot write", client(target).put_object, Key=target.key, Body=data)


def delete_objects(targets: Iterable[Location]) -> int:
    """Delete the given objects (bertetl's own: callers pass only what it wrote)."""
    removed = 0
    for target in targets:
        _s3_call(target, "cannot delete", client(target).delete_object, Key=target.key)
        removed += 1
    return removed


# -- local staging for object-store DESTs ----------------------------------------------------


def local_staging_root(dest: Location) -> Path:
    """Where partitions bound for `dest` are staged on this machine (one folder per DEST)."""
    digest = hashlib.sha256(dest.uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / LOCAL_STAGING / digest


def is_machine_staging(path: Path) -> bool:
    """Whether `path` is in this machine's staging for object-store and table DESTs
    (`local_staging_root`): a folder other machines cannot see."""
    root = Path(tempfile.gettempdir()).resolve() / LOCAL_STAGING
    return root in Path(path).resolve().parents


@contextlib.contextmanager
def local_staged_folder(dest: Location) -> Iterator[Path]:
    """A fresh local folder for one partition (or scratch) bound for `dest`; removed on exit."""
    path = local_staging_root(dest) / uuid.uuid4().hex
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise CommitError(f"cannot create staging folder {path}: {e}") from e
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clean_local_staging(dest: Location) -> int:
    """Remove what a killed run bound for `dest` left on this machine (call holding the lock)."""
    root = local_staging_root(dest)
    removed = 0
    if root.is_dir():
        for path in list(root.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


# -- the lock --------------------------------------------------------------------------------

#: Locks this process holds, by DEST URI: commits check theirs before they write.
_HELD: dict[str, ObjectStoreLock] = {}


def check_held(dest: Location) -> None:
    """Raise `CommitError` when this process took `dest`'s lock and has since lost it (a
    lease that ran out and was taken over); a commit must not go on then."""
    lock = next(
        (lock for uri, lock in _HELD.items() if dest.uri == uri or dest.uri.startswith(uri + "/")),
        None,
    )
    if lock is not None:
        lock.check()


class ObjectStoreLock:
    """`DEST/.bertetl.lock` on S3: created only if absent, held under a lease renewed by a
    heartbeat thread; a lease that ran out is taken over. Same interface as the local
    `DestinationLock` (`acquire`, `release`, a context manager)."""

    def __init__(self, dest: Location, lease_seconds: float = LEASE_SECONDS) -> None:
        writable(dest)
        self.dest = dest
        self.target = dest / LOCK_NAME
        self.lease_seconds = lease_seconds
        self.owner = uuid.uuid4().hex
        self.since = 0.0
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _body(self) -> bytes:
        info = {
            "owner": self.owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            **_process_space(),
            "since": self.since,
            "expires": time.time() + self.lease_seconds,
        }
        return json.dumps(info).encode()

    def _put(self, **condition: str) -> str | None:
        """One conditional `PutObject` of the lock; its ETag, or None when the condition
        failed (412: someone else holds or just took the lock)."""
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = client(self.target)
        try:
            response = s3.put_object(
                Bucket=self.target.bucket, Key=self.target.key, Body=self._body(), **condition
            )
        except ClientError as e:
            if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return None
            if _error_code(e) in ("NotImplemented", "501"):
                raise CommitError(
                    f"{self.dest.uri}: the store does not support conditional writes, so "
                    "bertetl cannot lock it; refusing to write"
                ) from e
            raise CommitError(str(storage_error(self.target, "cannot lock", e))) from e
        except BotoCoreError as e:
            raise CommitError(str(storage_error(self.target, "cannot lock", e))) from e
        return str(response["ETag"])

    def _holder(self) -> tuple[dict[str, Any], str] | None:
        """The lock's content and ETag, or None when it is gone."""
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = client(self.target)
        try:
            response = s3.get_object(Bucket=self.target.bucket, Key=self.target.key)
            body = response["Body"].read()
        except ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                return None
            raise CommitError(str(storage_error(self.target, "cannot read lock", e))) from e
        except BotoCoreError as e:
            raise CommitError(str(storage_error(self.target, "cannot read lock", e))) from e
        try:
            info = json.loads(body)
            if not isinstance(info, dict):
                info = {}
        except ValueError:
            info = {}
        return info, str(response["ETag"])

    def acquire(self) -> None:
        """Take the lock, or take over one whose lease ran out; else `CommitError` naming
        the holder."""
        check_bucket(self.dest)
        self.since = time.time()
        for _ in range(3):  # the lock may vanish or change between our calls
            etag = self._put(IfNoneMatch="*")
            if etag is not None:
                break
            found = self._holder()
            if found is None:
                continue
            info, their_etag = found
            expires = info.get("expires")
            why = (
                "its lease ran out"
                if isinstance(expires, int | float) and expires < time.time()
                else "its process is gone"
                if holder_is_dead(info)
                else None
            )
            if why is not None:
                etag = self._put(IfMatch=their_etag)
                if etag is not None:
                    log.warning(
                        "took over the lock of %s: %s (%s)", self.dest.uri, why, _describe(info)
                    )
                    break
                continue
            raise CommitError(
                f"another bertetl run is writing {self.dest.uri} ({_describe(info)}); wait for "
                f"it to finish, or pick another DEST (a killed run's lock is taken over at "
                f"once on its own machine, elsewhere {self.lease_seconds:.0f}s after its last "
                "heartbeat)"
            )
        else:
            raise CommitError(f"cannot take the lock of {self.dest.uri}: it keeps changing")
        self._etag, self._lost = etag, None
        _HELD[self.dest.uri] = self
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="bertetl-lock", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Extend the lease (the heartbeat calls this); a lock taken over meanwhile is lost."""
        with self._mutex:
            if self._etag is None or self._lost:
                return
            etag = self._put(IfMatch=self._etag)
            if etag is None:
                self._lost = "another run took it over (our lease ran out)"
                log.error("lost the lock of %s: %s", self.dest.uri, self._lost)
            else:
                self._etag = etag

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(self.lease_seconds / 3, 1.0)):
            try:
                self.renew()
            except CommitError as e:  # a network blip: try again on the next beat
                log.warning("lock heartbeat of %s failed: %s", self.dest.uri, e)

    def check(self) -> None:
        """`CommitError` when the lock was lost: nothing more may be committed."""
        if self._lost:
            raise CommitError(f"lost the lock of {self.dest.uri}: {self._lost}; not committed")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        _HELD.pop(self.dest.uri, None)
        with self._mutex:
            etag, self._etag = self._etag, None
        if etag is None or self._lost:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # only our own lock: a lock taken over meanwhile is not ours to delete
            client(self.target).delete_object(
                Bucket=self.target.bucket, Key=self.target.key, IfMatch=etag
            )
        except (ClientError, BotoCoreError) as e:
            log.warning("could not release the lock of %s: %s", self.dest.uri, e)

    def __enter__(self) -> ObjectStoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _process_space() -> dict[str, str]:
    """What makes a pid comparable across runs (Linux): the kernel's boot id and this
    process's pid namespace; {} elsewhere."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return {"boot_id": boot, "pid_namespace": os.readlink("/proc/self/ns/pid")}
    except OSError:
        return {}


def holder_is_dead(info: dict[str, Any]) -> bool:
    """Whether the lock's holder is a process that certainly no longer exists: it ran on this
    host, under this kernel boot, in this pid namespace (so its pid means the same here), and
    no process has that pid. A killed run's lock is then taken over at once instead of after
    its lease; anything less certain (another machine, a container, a reused pid) waits for
    the lease."""
    here = _process_space()
    if not here or info.get("host") != socket.gethostname():
        return False
    if any(info.get(key) != value for key, value in here.items()):
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _describe(info: dict[str, Any]) -> str:
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (KeyError, TypeError, ValueError, OverflowError):
        return "holder unknown"
