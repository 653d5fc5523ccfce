"""Writing to an object store (S3, Google Cloud Storage, Azure Blob Storage): whole objects,
deletes of bertetl's own objects, and the one-run-per-DEST lock as a conditional create with
a lease.

Object stores have no rename, so the local staged swap (`bertetl.io.commit`) cannot apply.
What holds instead (docs/STORAGE.md):

- each object is uploaded whole from a local file: one request below the store's multipart
  threshold, else a multipart (S3), resumable (GCS) or block-list (Azure) upload that the
  store makes visible only once completed. A reader sees the old object or the new one;
- a partition's `_manifest.json` is written last (one request): it is the commit point
  (`bertetl.runs.staged` orders the steps);
- the lock is `DEST/.bertetl.lock`, created only if absent (S3 `IfNoneMatch='*'`, GCS
  `ifGenerationMatch=0`, Azure `If-None-Match: *`), so two runs never both hold it; it
  carries a lease that a heartbeat thread renews with a write conditional on our version of
  it; a lease that ran out (a killed run) is taken over with a write conditional on its
  version, so of two runs taking it over only one wins. A lock whose holder certainly is
  gone (same host, kernel boot and pid namespace, no such pid) is taken over the same way at
  once (`holder_is_dead`).

The calls themselves are each store's client (`bertetl.io.stores.clients`: boto3,
google-cloud-storage, azure-storage-blob); reads go through pyarrow's filesystems (fsspec's
adlfs for Azure). Credentials come from each store's standard chain. A store without a client
there (another fsspec scheme) can be a SOURCE; a DEST there is refused (`writable`).
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
from pathlib import Path
from typing import Any

from bertetl.errors import CommitError
from bertetl.io.scratch import fresh_folder
from bertetl.io.stores.clients import client
from bertetl.io.stores.locations import LOCK_NAME, Location

log = logging.getLogger(__name__)

#: How long a lock stays valid without a heartbeat; a run killed without releasing it
#: blocks DEST at most this long. The heartbeat renews it every third of it.
LEASE_SECONDS = 120.0
#: A run trusts its lock only until this long before its lease ends (counted from when the
#: last successful write of the lock was sent), so clocks a little apart cannot let a taker in
#: while it still commits.
LEASE_MARGIN_SECONDS = 30.0
#: Local folder (under the system's temp folder) where object-store runs stage partitions.
LOCAL_STAGING = "bertetl-staging"


def writable(location: Location) -> None:
    """Refuse (`StorageError`) a DEST on a store bertetl cannot lock or write whole (a
    missing client package fails here too, before any work)."""
    client(location)


def check_bucket(location: Location) -> None:
    """Fail early, in one line naming the URI, when DEST's bucket is missing or not ours."""
    client(location).check_bucket(location)


def upload_file(local: Path, target: Location) -> None:
    """Upload a local file whole to `target` (never visible half-written), then check the
    size the store reports."""
    client(target).upload_file(local, target)


def copy_object(source: Location, target: Location) -> None:
    """Copy an object whole on its store (no download), then check the size the store
    reports: a reader sees the old object at `target` or the whole copy."""
    import pyarrow as pa

    try:
        target.fs.copy_file(source.path, target.path)
        copied, size = target.fs.get_file_info([source.path, target.path])
    except (OSError, pa.ArrowException) as e:
        raise CommitError(f"{target.uri}: cannot copy {source.uri} there: {e}") from e
    if copied.size != size.size:
        raise CommitError(
            f"{target.uri}: the store holds {size.size} bytes after copying {copied.size}"
        )


def put_bytes(target: Location, data: bytes) -> None:
    """Write a small object (a manifest) in one request."""
    if client(target).put(target, data) is None:  # no condition was sent: cannot happen
        raise CommitError(f"{target.uri}: the store refused an unconditional write")


def delete_objects(targets: Iterable[Location]) -> int:
    """Delete the given objects (bertetl's own: callers pass only what it wrote)."""
    removed = 0
    for target in targets:
        client(target).delete(target)
        removed += 1
    return removed


# -- local staging for object-store DESTs ----------------------------------------------------


def local_staging_root(dest: Location) -> Path:
    """Where partitions bound for `dest` are staged on this machine (one folder per DEST)."""
    digest = hashlib.sha256(dest.uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / LOCAL_STAGING / digest


def is_machine_staging(path: Path | Location) -> bool:
    """Whether `path` is in this machine's staging for object-store and table DESTs
    (`local_staging_root`): a folder other machines cannot see (a prefix on a store is not)."""
    if isinstance(path, Location):
        if not path.local:
            return False
        path = Path(path.path)
    root = Path(tempfile.gettempdir()).resolve() / LOCAL_STAGING
    return root in Path(path).resolve().parents


@contextlib.contextmanager
def local_staged_folder(dest: Location) -> Iterator[Path]:
    """A fresh local folder for one partition (or scratch) bound for `dest`; removed on exit,
    with the folder per DEST when it is left empty."""
    with fresh_folder(local_staging_root(dest)) as path:
        yield path


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
    """`DEST/.bertetl.lock` on the store: created only if absent, held under a lease renewed
    by a heartbeat thread; a lease that ran out is taken over. Same interface as the local
    `DestinationLock` (`acquire`, `release`, a context manager)."""

    def __init__(self, dest: Location, lease_seconds: float = LEASE_SECONDS) -> None:
        writable(dest)
        self.dest = dest
        self.target = dest / LOCK_NAME
        self.lease_seconds = lease_seconds
        self.owner = uuid.uuid4().hex
        self.since = 0.0
        self._version: str | None = None
        self._lost: str | None = None
        self._valid_until = 0.0  # time.monotonic() after which the lease may have run out
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

    def _put(self, *, if_absent: bool = False, if_version: str = "") -> str | None:
        """One conditional write of the lock; its version, or None when the condition
        failed (someone else holds or just took the lock). Success moves `_valid_until`."""
        sent = time.monotonic()
        try:
            version = client(self.target).put(
                self.target, self._body(), if_absent=if_absent, if_version=if_version
            )
        except CommitError as e:
            raise CommitError(str(e).replace("cannot write", "cannot lock", 1)) from e
        if version is not None:
            self._lease_from(sent)
        return version

    def _lease_from(self, sent: float) -> None:
        margin = min(LEASE_MARGIN_SECONDS, self.lease_seconds / 4)
        self._valid_until = sent + self.lease_seconds - margin

    def _holder(self) -> tuple[dict[str, Any], str] | None:
        """The lock's content and version, or None when it is gone."""
        found = client(self.target).get(self.target)
        if found is None:
            return None
        body, version = found
        try:
            info = json.loads(body)
            if not isinstance(info, dict):
                info = {}
        except ValueError:
            info = {}
        return info, version

    def acquire(self) -> None:
        """Take the lock, or take over one whose lease ran out; else `CommitError` naming
        the holder."""
        check_bucket(self.dest)
        self.since, started = time.time(), time.monotonic()
        for _ in range(3):  # the lock may vanish or change between our calls
            version = self._put(if_absent=True)
            if version is not None:
                break
            found = self._holder()
            if found is None:
                continue
            info, their_version = found
            if info.get("owner") == self.owner:  # our own write, retried by the client after
                version = their_version  # it reached the store: the lock is ours
                self._lease_from(started)
                break
            expires = info.get("expires")
            why = (
                "its lease ran out"
                if isinstance(expires, int | float) and expires < time.time()
                else "its process is gone"
                if holder_is_dead(info)
                else None
            )
            if why is not None:
                version = self._put(if_version=their_version)
                if version is not None:
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
        self._version, self._lost = version, None
        _HELD[self.dest.uri] = self
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="bertetl-lock", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Extend the lease (the heartbeat calls this); a lock taken over meanwhile is lost."""
        with self._mutex:
            if self._version is None or self._lost:
                return
            sent = time.monotonic()
            version = self._put(if_version=self._version)
            if version is None:
                found = self._holder()
                if found is not None and found[0].get("owner") == self.owner:
                    self._version = found[1]  # our own renewal, retried after it landed
                    self._lease_from(sent)
                    return
                self._lost = "another run took it over (our lease ran out)"
                log.error("lost the lock of %s: %s", self.dest.uri, self._lost)
            else:
                self._version = version

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(self.lease_seconds / 3, 1.0)):
            try:
                self.renew()
            except CommitError as e:  # a network blip: try again on the next beat
                log.warning("lock heartbeat of %s failed: %s", self.dest.uri, e)

    def check(self) -> None:
        """`CommitError` when the lock was lost: nothing more may be committed."""
        if not self._lost and time.monotonic() > self._valid_until:
            self._lost = (
                f"its lease was not renewed for {self.lease_seconds:.0f}s (the store did not "
                "answer the heartbeat), so another run may have taken it over"
            )
        if self._lost:
            raise CommitError(f"lost the lock of {self.dest.uri}: {self._lost}; not committed")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        _HELD.pop(self.dest.uri, None)
        with self._mutex:
            version, self._version = self._version, None
        if version is None or self._lost:
            return
        try:  # only our own lock: a lock taken over meanwhile is not ours to delete
            client(self.target).delete(self.target, if_version=version)
        except CommitError as e:
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
