"""Executors run the engine's jobs: `LocalExecutor` (this process, or a pool of worker
processes) and `RayExecutor` (a Ray Data pipeline on a Ray cluster).

`EXECUTORS` (`bertetl.executor_registry`, in the foundation so the config can validate each
executor's options) names them all, with their options models and classes; `make_executor`
is the only code that chooses an executor by its name. Runs and flows use the `Executor`
contract (`bertetl.executors.base`) and its capabilities. Adding an executor means one module
(or package) here, and its options model and one `ExecutorEntry` in the registry; the
contract test (tests/executors/test_contract.py) then runs it through every case.
"""

from __future__ import annotations

import importlib

from bertetl.config import EngineConfig
from bertetl.errors import ExecutorError
from bertetl.executor_registry import EXECUTORS, ExecutorEntry
from bertetl.executors.base import Capabilities, Executor, Job

__all__ = ["EXECUTORS", "Capabilities", "Executor", "ExecutorEntry", "Job", "make_executor"]


def make_executor(config: EngineConfig) -> Executor:
    """The executor `config.executor.kind` names, built for `config` (nothing loaded yet).

    A missing optional dependency is an `ExecutorError` naming the extra to install.
    """
    kind = config.executor.kind
    entry = EXECUTORS[kind]
    module_name, class_name = entry.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = entry.extra
        needs = f"the '{extra}' extra: pip install 'bertetl[{extra}]'" if extra else "its modules"
        raise ExecutorError(f"--executor {kind} needs {needs} ({e})") from e
    executor: Executor = getattr(module, class_name)(config)
    if config.emits_windows and not executor.capabilities.emits_windows:
        raise ExecutorError(
            f"--executor {kind} does not write window rows yet (--emit {config.emit}); "
            "use --executor local (the default)"
        )
    return executor
