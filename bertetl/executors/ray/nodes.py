"""The nodes of the Ray cluster a run uses: whether each can read the run's scratch, and
keeping the driver's own actors on the driver's node."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import ray

from bertetl.errors import ExecutorError
from bertetl.io.stores.locations import Location
from bertetl.io.stores.node_staging import read_text, write_whole

#: How long the nodes may take to answer whether they see the run's scratch.
PROBE_SECONDS = 60.0


def check_every_node_sees(scratch: Path | Location) -> None:
    """Refuse (`ExecutorError`, one line) a run whose scratch some node with CPUs cannot read:
    a local DEST's folder on a cluster whose nodes share no disk, or a store whose credentials
    a node lacks. A marker is written here and read by one small task pinned to each node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    marker = scratch / f".probe-{token}"
    write_whole(marker, token.encode())
    nodes = {
        node["NodeID"]: node.get("NodeManagerAddress", "?")
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0
    }
    asks = {
        _sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        ).remote(marker, token): address
        for node, address in nodes.items()
    }
    done, _ = ray.wait(list(asks), num_returns=len(asks), timeout=PROBE_SECONDS)
    blind = {asks[ref]: why for ref in done if (why := ray.get(ref)) is not None}
    if blind:
        address, why = next(iter(blind.items()))
        raise ExecutorError(
            f"--executor ray: {len(blind)} of the cluster's {len(nodes)} node(s) cannot read "
            f"this run's scratch {scratch} (node {address}: {why}); every node needs DEST's "
            "filesystem mounted at the same path (a local DEST; none is shared on this "
            "cluster), or the store's credentials (an object-store DEST)"
        )


@ray.remote(num_cpus=0, max_retries=0)
def _sees(marker: Path | Location, token: str) -> str | None:
    """None when `marker` holds `token` on this node, else why not."""
    try:
        found = read_text(marker)
    except Exception as e:  # any failure is the answer: the node cannot read it
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None if found == token else "it holds another run's marker"


def on_this_node() -> Any:
    """A scheduling strategy that keeps an actor on the driver's node, so losing a worker
    node never loses it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return NodeAffinitySchedulingStrategy(node_id=node, soft=True)
