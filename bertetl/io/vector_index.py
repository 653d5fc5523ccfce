"""The vector index a destination builds after each commit and keeps up to date (`--index`):
its options, declared once (the CLI's options and the flows' parameters take them from here).
Light on purpose: `bertetl --help` imports it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class IndexSpec(BaseModel):
    """A vector index a destination builds on `column` after each commit and keeps up to date
    (`--index`, `--index-param`): `kind` one of its `capabilities.indexes`; `metric` the
    distance (cosine for normalized embeddings); `params` the kind's own, as integers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(
        description="The vector index to build in DEST and keep up to date after each run: "
        "ivf_pq or ivf_hnsw_sq (lance://), hnsw (postgresql://)."
    )
    column: str = Field("embedding", description="The vector column it indexes.")
    metric: Literal["cosine", "l2", "dot"] = Field(
        "cosine", description="Its distance: cosine for normalized embeddings."
    )
    params: dict[str, int] = Field(
        default_factory=dict,
        description="The index's parameters: num_partitions, num_sub_vectors (Lance); m, "
        "ef_construction (hnsw).",
    )


def parse_index(
    kind: str | None, params: list[str] | None, metric: str = "cosine"
) -> IndexSpec | None:
    """`--index KIND --index-param KEY=N ...` as an `IndexSpec` (None without `--index`); a
    malformed parameter is a `ValueError` naming it."""
    if kind is None:
        if params:
            raise ValueError("--index-param needs --index")
        return None
    values: dict[str, int] = {}
    for pair in params or ():
        key, sep, value = pair.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--index-param {pair!r}: expected KEY=INTEGER (e.g. m=16)")
        values[key.strip()] = int(value)
    return IndexSpec(kind=kind, metric=metric, params=values)
