"""Run the `bertetl` CLI and SIGKILL this process at a chosen point (for kill-and-resume tests).

    python -m tests.flows.killed_run after-commit N -- bertetl args...
    python -m tests.flows.killed_run mid-write N -- bertetl args...

`after-commit N`: killed right after the N-th partition is swapped in.
`mid-write N`: killed on the N-th output batch write, before it is written.
"""

from __future__ import annotations

import os
import signal
import sys

import bertetl.partitioned as partitioned
import bertetl.write as write


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    mode, count = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1 :]
    calls = {"n": 0}
    if mode == "after-commit":
        real_swap_in = partitioned.swap_in

        def swap_in_then_die(staged, target):
            real_swap_in(staged, target)
            calls["n"] += 1
            if calls["n"] == count:
                _die()

        partitioned.swap_in = swap_in_then_die
    elif mode == "mid-write":
        real_write = write.ParquetSink.write

        def write_or_die(self, batch):
            calls["n"] += 1
            if calls["n"] == count:
                _die()
            real_write(self, batch)

        write.ParquetSink.write = write_or_die
    else:
        raise SystemExit(f"unknown mode {mode}")
    from bertetl.cli import app

    app(args, prog_name="bertetl")


if __name__ == "__main__":
    main()
