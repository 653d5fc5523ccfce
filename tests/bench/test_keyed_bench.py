"""`bertetl bench keyed` on a small table and the tiny model: the rerun after the edit infers
exactly the edited rows, and the dry run says so before it."""

from __future__ import annotations

from pathlib import Path

from bertetl.bench.keyed import run_dry_run_bench, run_keyed_bench


def test_the_keyed_bench_reruns_only_the_edited_rows(tmp_path: Path, tiny_embed_dir: Path):
    result = run_keyed_bench(tmp_path, 400, str(tiny_embed_dir), "cpu", 0.02)
    assert result["edited_rows"] == 8 * int(50 * 0.02)
    assert result["incremental_rows_inferred"] == result["edited_rows"]
    assert result["dry_run_rows_inferred"] == result["edited_rows"]
    assert 0 < result["key_over_all_bytes"] < 1
    dry = run_dry_run_bench(tmp_path, 1000, str(tiny_embed_dir))
    assert dry["rows"] == 1000 and 0 < dry["rows_inferred"] <= 1000
