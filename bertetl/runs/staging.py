"""Where a run stages its parts and partitions: on the driver's machine (or beside DEST on
its filesystem), or, when the executor's workers run on other nodes, in the destination's
staging every node reaches (`Destination.node_staging`: a hidden prefix of an object-store
DEST), so that workers on nodes sharing no disk write there and the driver commits from it."""

from __future__ import annotations

import contextlib
from typing import Any

from bertetl.executors import Executor
from bertetl.io.destinations import Destination


def on_every_node(executor: Executor, destination: Destination) -> bool:
    """Whether this run stages where every node reaches: the executor's workers span nodes
    and the destination has such a staging (`Capabilities.every_node`)."""
    return executor.capabilities.spans_nodes and destination.capabilities.every_node


def run_staging(
    executor: Executor, destination: Destination
) -> contextlib.AbstractContextManager[Any]:
    """A fresh staging place for this run's executor: the destination's node staging when
    `on_every_node`, else its local staging folder; removed on exit."""
    if on_every_node(executor, destination):
        return destination.node_staging()
    return destination.staging()
