"""Serve the flows as Prefect deployments: `incremental` nightly on a cron, `enrich`,
`backfill` and `evaluate` on demand with parameters.

Locally (Prefect starts a temporary server for the lifetime of the process)::

    PREFECT_SERVER_ANALYTICS_ENABLED=false python -m bertetl.flows.deployments

Against a server (its UI then lists the deployments, with a parameter form for each)::

    prefect server start                                # or any Prefect server / Cloud
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    BERTETL_SOURCE=/data/reviews BERTETL_DEST=/data/enriched python -m bertetl.flows.deployments
    prefect deployment run bertetl-backfill/on-demand --params '{"params": {...}}'

The served process runs the flow runs itself (no work pool). The nightly run's default
parameters come from the environment: BERTETL_SOURCE, BERTETL_DEST, BERTETL_PARTITION_COLUMN
(default "date"; ignored with a key), BERTETL_KEY (key columns, COL[,COL...]: the run is then
keyed, for a table that changes in place), BERTETL_TEXT_COLUMN ("text"), BERTETL_EMBED_MODEL
("minilm"; empty for none), BERTETL_CLASSIFY_MODEL (none), BERTETL_EXECUTOR ("local"; "ray"
runs each partition on Ray), BERTETL_RAY_ADDRESS (RAY_ADDRESS, else a local Ray) and
BERTETL_CRON ("0 2 * * *", UTC). Without SOURCE and DEST it points at the demo paths,
relative to the serving process's working directory.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from bertetl.flows.enrich import enrich_flow
from bertetl.flows.evaluate import evaluate_flow
from bertetl.flows.params import IncrementalParams
from bertetl.flows.partitioned import backfill_flow, incremental_flow

NIGHTLY = "bertetl-incremental/nightly"
ENRICH = "bertetl-enrich/on-demand"
BACKFILL = "bertetl-backfill/on-demand"
EVALUATE = "bertetl-evaluate/on-demand"


def nightly_parameters(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The nightly run's default parameters, validated, from BERTETL_* variables."""
    env = dict(os.environ if env is None else env)
    engine: dict[str, Any] = {"text_column": env.get("BERTETL_TEXT_COLUMN", "text")}
    for key, var, default in (
        ("embed_model", "BERTETL_EMBED_MODEL", "minilm"),
        ("classify_model", "BERTETL_CLASSIFY_MODEL", ""),
        ("executor", "BERTETL_EXECUTOR", ""),
        ("ray_address", "BERTETL_RAY_ADDRESS", ""),
    ):
        if value := env.get(var, default):
            engine[key] = value
    from bertetl.io.keys import parse_key

    key = parse_key(env.get("BERTETL_KEY"))
    params = IncrementalParams(
        source=env.get("BERTETL_SOURCE", "demo-data/partitioned"),
        dest=env.get("BERTETL_DEST", "demo-data/enriched-nightly"),
        partition_column=None if key else env.get("BERTETL_PARTITION_COLUMN", "date"),
        engine=engine,
        **({"key": key} if key else {}),
    )
    return {"params": params.model_dump(mode="json", exclude_unset=True)}


def build_deployments() -> list[RunnerDeployment]:
    """The deployments `main` serves; on-demand ones take every parameter per run."""
    return [
        incremental_flow.to_deployment(
            name=NIGHTLY.split("/")[1],
            cron=os.environ.get("BERTETL_CRON", "0 2 * * *"),
            parameters=nightly_parameters(),
            tags=["bertetl", "nightly"],
            concurrency_limit=1,  # an overlapping nightly run queues instead of failing on the lock
        ),
        enrich_flow.to_deployment(name=ENRICH.split("/")[1], tags=["bertetl"]),
        backfill_flow.to_deployment(name=BACKFILL.split("/")[1], tags=["bertetl"]),
        evaluate_flow.to_deployment(name=EVALUATE.split("/")[1], tags=["bertetl"]),
    ]


def main() -> None:
    serve(*build_deployments())


if __name__ == "__main__":
    main()
