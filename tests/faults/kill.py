"""Run the `bertetl` CLI and SIGKILL this process at a chosen point of the run.

    python -m tests.faults.kill POINT N -- bertetl args...

POINT is where the N-th call of a step kills the process (a real SIGKILL, no cleanup):

    read         before the N-th record batch is read from an input file
    infer        in the N-th model batch (mid-window, in the model stage)
    write        before the N-th output batch is written to a (staged) file
    file-commit  before the N-th output file is closed, fsynced and renamed into staging
    manifest     before the N-th partition manifest is written
    swap         before the N-th staged partition is swapped in
    after-swap   right after the N-th partition is swapped in
    delete       before the N-th delete of objects from an object-store DEST (the first
                 commit step of a partition there removes its old manifest)
    upload       before the N-th output object is uploaded to an object-store DEST
    table-commit        before the N-th partition's transaction on a Delta or Iceberg DEST
    after-table-commit  right after it
    table-replace       before `enrich` replaces a whole Delta or Iceberg DEST (N = 1)
    after-table-replace right after it
    table-merge         before a keyed run's MERGE into a Delta or Iceberg DEST (N = 1)
    after-table-merge   right after it
    keyed-record        before a keyed run writes its record into a folder DEST (N = 1)
    pg-merge            before a keyed run's transaction into a PostgreSQL DEST (N = 1)
    after-pg-merge      right after it

POINT `slow` kills nothing: each partition's commit (its manifest, or its table transaction)
is followed by N tenths of a second of sleep, so a reader polling DEST meanwhile sees the run
half done.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import bertetl.engine.encoders as infer
import bertetl.engine.pipeline as pipeline
import bertetl.io.commit as commits
import bertetl.io.manifest as manifests
import bertetl.io.write as write

POINTS = ("read", "infer", "write", "file-commit", "manifest", "swap", "after-swap")
#: Points only an object-store DEST reaches.
STORE_POINTS = ("delete", "upload")
#: Points only a table DEST reaches.
TABLE_POINTS = (
    "table-commit",
    "after-table-commit",
    "table-replace",
    "after-table-replace",
    "table-merge",
    "after-table-merge",
)


def _die() -> None:
    """SIGKILL this process; with BERTETL_PAUSE_FILE set, create that file and wait to be
    killed from outside instead (to hold the run at this point)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if pause_file := os.environ.get("BERTETL_PAUSE_FILE"):
        open(pause_file, "w").close()
        while True:
            time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)


def _counted(real: Callable[..., Any], count: int, after: bool = False) -> Callable[..., Any]:
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == count and not after:
            _die()
        result = real(*args, **kwargs)
        if calls["n"] == count and after:
            _die()
        return result

    return wrapper


def _then_sleep(real: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        time.sleep(seconds)
        return result

    return wrapper


def _targets() -> dict[str, tuple[Any, str, bool]]:
    """Each counted point: the object whose attribute is wrapped, its name, and whether the
    process dies after the call (else before it)."""
    import bertetl.io.stores.objects as objectstore
    import bertetl.io.tables as tables
    from bertetl.io.destinations.local import LocalFolder
    from bertetl.io.destinations.postgres import PostgresTable

    return {
        "infer": (infer.EncoderStage, "_run_rows", False),
        "write": (write.ParquetSink, "write", False),
        "file-commit": (write.ParquetSink, "commit", False),
        "manifest": (manifests, "write_manifest", False),
        "swap": (commits, "swap_in", False),
        "after-swap": (commits, "swap_in", True),
        "delete": (objectstore, "delete_objects", False),
        "upload": (objectstore, "upload_file", False),
        "table-commit": (tables, "commit_partition", False),
        "after-table-commit": (tables, "commit_partition", True),
        "table-replace": (tables, "replace_table", False),
        "after-table-replace": (tables, "replace_table", True),
        "table-merge": (tables, "merge_rows", False),
        "after-table-merge": (tables, "merge_rows", True),
        "keyed-record": (LocalFolder, "write_record", False),
        "pg-merge": (PostgresTable, "merge_keyed", False),
        "after-pg-merge": (PostgresTable, "merge_keyed", True),
    }


def _install(point: str, count: int) -> None:
    if point == "read":
        real_stream = pipeline.stream
        calls = {"n": 0}

        def stream(*args: Any, **kwargs: Any):
            for batch in real_stream(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == count:
                    _die()
                yield batch

        pipeline.stream = stream
    elif point == "slow":
        import bertetl.io.tables as tables

        manifests.write_manifest = _then_sleep(manifests.write_manifest, count / 10)
        tables.commit_partition = _then_sleep(tables.commit_partition, count / 10)
    elif point in (targets := _targets()):
        owner, name, after = targets[point]
        setattr(owner, name, _counted(getattr(owner, name), count, after=after))
    else:
        extra = ("keyed-record", "pg-merge", "after-pg-merge")
        known = ", ".join(POINTS + STORE_POINTS + TABLE_POINTS + extra)
        raise SystemExit(f"unknown kill point {point}; one of {known}")


def main() -> None:
    point, count = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1 :]
    _install(point, count)
    from bertetl.cli import app

    app(args, prog_name="bertetl")


if __name__ == "__main__":
    main()
