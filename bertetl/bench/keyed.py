"""The keyed-run benchmark (`bertetl bench keyed`): a table of real reviews that changes in
place. In one run: a full keyed run, then 1% of the rows edited and the keyed rerun (the
ratio of the two is the point), a dry run over the changed table, and the bytes of
`--output-columns key` against `all`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.bench.corpus import rotten_tomatoes
from bertetl.config import EngineConfig

FILES = 8


def write_reviews(root: Path, rows: int) -> Path:
    """`rows` reviews (the corpus repeated, each copy's text numbered so every row is its own
    text) in `FILES` files with an `id` key."""
    corpus = rotten_tomatoes().column("text").to_pylist()
    root.mkdir(parents=True)
    share = -(-rows // FILES)
    for part in range(FILES):
        ids = np.arange(part * share, min(rows, (part + 1) * share))
        texts = [f"{corpus[i % len(corpus)]} ({i // len(corpus)})" for i in ids]
        pq.write_table(pa.table({"id": ids, "text": texts}), root / f"part-{part}.parquet")
    return root


def edit_share(root: Path, share: float, seed: int = 0) -> int:
    """Edit the text of `share` of the rows, spread over every file; how many."""
    rng = np.random.default_rng(seed)
    edited = 0
    for path in sorted(root.glob("*.parquet")):
        table = pq.read_table(path)
        texts = table.column("text").to_pylist()
        for i in rng.choice(len(texts), size=max(1, int(len(texts) * share)), replace=False):
            texts[i] = f"{texts[i]} (edited)"
            edited += 1
        table = table.set_column(1, "text", pa.array(texts, pa.string()))
        pq.write_table(table, path)
    return edited


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.parquet"))


def run_keyed_bench(
    work: Path, rows: int, model: str, device: str, share: float, side: bool = True
) -> dict[str, Any]:
    """Time each step (seconds) and report the ratios (`side`: also a full run with
    `--output-columns key`, for its bytes)."""
    from bertetl.runs.keyed import KeyedOptions, run_keyed

    config = EngineConfig(text_column="text", embed_model=model, device=device)
    src = write_reviews(work / "src", rows)
    key = KeyedOptions(key=["id"])

    def timed(dest: Path, options: KeyedOptions, dry_run: bool = False) -> tuple[float, Any]:
        started = time.perf_counter()
        report = run_keyed(src, dest, config, options, dry_run=dry_run)
        return time.perf_counter() - started, report

    full_seconds, _ = timed(work / "all", key)
    edited = edit_share(src, share)
    dry_seconds, dry = timed(work / "all", key, dry_run=True)
    incremental_seconds, report = timed(work / "all", key)
    result = {
        "rows": rows,
        "model": model,
        "device": device,
        "edited_rows": edited,
        "full_seconds": round(full_seconds, 2),
        "incremental_seconds": round(incremental_seconds, 2),
        "incremental_over_full": round(incremental_seconds / full_seconds, 4),
        "incremental_rows_inferred": report.counts["rows_inferred"],
        "dry_run_seconds": round(dry_seconds, 2),
        "dry_run_rows_inferred": dry.counts["rows_inferred"],
        "output_bytes_all": _bytes(work / "all"),
    }
    if side:
        side_seconds, _ = timed(work / "side", KeyedOptions(key=["id"], output_columns="key"))
        result["output_bytes_key"] = _bytes(work / "side")
        result["key_over_all_bytes"] = round(_bytes(work / "side") / _bytes(work / "all"), 4)
        result["side_table_seconds"] = round(side_seconds, 2)
    return result


def run_dry_run_bench(work: Path, rows: int, model: str) -> dict[str, Any]:
    """A dry run over a table of `rows` rows that DEST does not hold yet: the planning alone
    (keys checked, every text fingerprinted), no model work."""
    from bertetl.runs.keyed import KeyedOptions, run_keyed

    config = EngineConfig(text_column="text", embed_model=model)
    src = write_reviews(work / "dry-src", rows)
    started = time.perf_counter()
    report = run_keyed(src, work / "dry-dest", config, KeyedOptions(key=["id"]), dry_run=True)
    return {
        "rows": rows,
        "dry_run_seconds": round(time.perf_counter() - started, 2),
        "rows_inferred": report.counts["rows_inferred"],
    }
