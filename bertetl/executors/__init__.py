"""Executors run the engine's jobs: `LocalExecutor` (this process, or a pool of worker
processes) and `RayExecutor` (a Ray Data pipeline on a Ray cluster).

`make_executor` is the only code that chooses an executor by its kind; runs and flows use the
`Executor` contract (`bertetl.executors.base`) and its capabilities. Adding an executor means
one module (or package) here, its options model in `bertetl.config`, and one line in
`EXECUTORS` below.
"""

from __future__ import annotations

import importlib

from bertetl.config import EngineConfig
from bertetl.errors import ExecutorError
from bertetl.executors.base import Capabilities, Executor, Job

__all__ = ["EXECUTORS", "Capabilities", "Executor", "Job", "make_executor"]

#: Executor kind -> "module:class" (imported only when chosen) and the extra it needs.
EXECUTORS: dict[str, tuple[str, str | None]] = {
    "local": ("bertetl.executors.local:LocalExecutor", None),
    "ray": ("bertetl.executors.ray.executor:RayExecutor", "ray"),
}


def make_executor(config: EngineConfig) -> Executor:
    """The executor `config.executor.kind` names, built for `config` (nothing loaded yet).

    A missing optional dependency is an `ExecutorError` naming the extra to install.
    """
    kind = config.executor.kind
    target, extra = EXECUTORS[kind]
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        needs = f"the '{extra}' extra: pip install 'bertetl[{extra}]'" if extra else "its modules"
        raise ExecutorError(f"--executor {kind} needs {needs} ({e})") from e
    executor: Executor = getattr(module, class_name)(config)
    return executor
