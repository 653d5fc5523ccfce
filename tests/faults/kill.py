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
import bertetl.io.write as write
import bertetl.runs.staged as partitioned

POINTS = ("read", "infer", "write", "file-commit", "manifest", "swap", "after-swap")
#: Points only an object-store DEST reaches.
STORE_POINTS = ("delete", "upload")
#: Points only a table DEST reaches.
TABLE_POINTS = ("table-commit", "after-table-commit")


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
    elif point == "infer":
        infer.EncoderStage._run_rows = _counted(infer.EncoderStage._run_rows, count)
    elif point == "write":
        write.ParquetSink.write = _counted(write.ParquetSink.write, count)
    elif point == "file-commit":
        write.ParquetSink.commit = _counted(write.ParquetSink.commit, count)
    elif point == "manifest":
        partitioned.write_manifest = _counted(partitioned.write_manifest, count)
    elif point in STORE_POINTS:
        import bertetl.io.objectstore as objectstore

        name = "delete_objects" if point == "delete" else "upload_file"
        setattr(objectstore, name, _counted(getattr(objectstore, name), count))
    elif point in TABLE_POINTS:
        import bertetl.io.tables as tables

        after = point == "after-table-commit"
        tables.commit_partition = _counted(tables.commit_partition, count, after=after)
    elif point in ("swap", "after-swap"):
        partitioned.swap_in = _counted(partitioned.swap_in, count, after=point == "after-swap")
    else:
        raise SystemExit(
            f"unknown kill point {point}; one of {', '.join(POINTS + STORE_POINTS + TABLE_POINTS)}"
        )


def main() -> None:
    point, count = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1 :]
    _install(point, count)
    from bertetl.cli import app

    app(args, prog_name="bertetl")


if __name__ == "__main__":
    main()
