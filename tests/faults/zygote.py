"""A process that imports the `bertetl` CLI once, then forks one fresh child per killed run.

Each kill test runs the real CLI in a process of its own and SIGKILLs it mid-run
(`tests/faults/kill.py`). Started from scratch, such a process spends most of its life
importing torch, transformers and Prefect (10-15 s of CPU on a 2-core machine, against a
second or two of real work), so the kill campaign forks each run from this zygote instead: the
child is still a separate process running the real CLI against the real files and servers,
with its own kill point installed, and the SIGKILL still hits a process in the middle of its
work. Only the imports are shared, made before any thread, file or model exists.

    python -m tests.faults.zygote      (started by `Zygote`, fed one JSON request per line)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class Zygote:
    """The zygote process, started with `env` (Prefect's API URL and the like are read at
    import, so they must be set here); `run` forks one CLI run from it."""

    def __init__(self, env: dict[str, str], cwd: Path, scratch: Path) -> None:
        self.scratch = scratch
        self.runs = 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        assert ready.strip() == "ready", f"the zygote did not start: {ready!r}"

    def run(self, point: str, count: int, args: list[str], timeout: float = 300) -> Any:
        """`python -m tests.faults.kill POINT COUNT -- ARGS`, forked: an object with
        `returncode` (-9 when killed), `stdout` and `stderr`."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.runs += 1
        out, err = (self.scratch / f"run-{self.runs}.{name}" for name in ("out", "err"))
        request = {"point": point, "count": count, "args": args, "timeout": timeout}
        self.process.stdin.write(json.dumps({**request, "out": str(out), "err": str(err)}) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, "the zygote died"
        outcome = json.loads(answer)
        if outcome["timed_out"]:
            raise subprocess.TimeoutExpired(args, timeout, err.read_text(errors="replace"))
        returncode = outcome["returncode"]
        return subprocess.CompletedProcess(
            args, returncode, out.read_text(errors="replace"), err.read_text(errors="replace")
        )

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _child(request: dict[str, Any]) -> None:
    """In the forked child: the run's own stdio, its kill point, the CLI; never returns."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["out"]), (2, request["err"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
        from bertetl.cli import app
        from tests.faults.kill import _install

        _install(request["point"], request["count"])
        try:
            app(request["args"], prog_name="bertetl")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> dict[str, Any]:
    """The child's exit as subprocess reports it (-N for signal N), and whether it ran past
    `timeout` (then this process SIGKILLed it: not a kill point's doing)."""
    deadline, timed_out = time.monotonic() + timeout, False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            return {"returncode": code, "timed_out": timed_out}
        if time.monotonic() > deadline and not timed_out:
            os.kill(pid, signal.SIGKILL)
            timed_out = True
        time.sleep(0.05)


def main() -> None:
    import transformers

    import bertetl.cli
    import bertetl.flows.partitioned  # noqa: F401
    import tests.faults.kill  # noqa: F401

    transformers.BertModel  # noqa: B018  (the lazy import of the model code, made now)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps(_wait(pid, request["timeout"])), flush=True)


if __name__ == "__main__":
    main()
