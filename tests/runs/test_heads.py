"""Every kind of head through partitioned runs: backfill, then incremental with row reuse."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from bertetl.config import EngineConfig
from bertetl.executors.local import LocalExecutor
from bertetl.io.manifest import read_manifest
from bertetl.runs.enrich import enrich
from tests.outputs import assert_equivalent, edit_rows
from tests.runs.test_object_store import run_all


def test_heads_are_reused_row_by_row_in_an_edited_partition(
    tiny_embed_dir: Path,
    tiny_multilabel_dir: Path,
    tiny_token_classifier_dir: Path,
    partitioned_source,
    tmp_path: Path,
) -> None:
    """A named classifier, a zero-shot head and an NER head with redaction: the edited
    partition infers only its 3 edited rows and reuses the rest (every head's columns), and
    the result equals a clean run over the edited input; manifests count each head's labels."""
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify=[f"topic={tiny_multilabel_dir}"],
        zero_shot=["kind=good,bad,numbers"],
        ner=[f"people={tiny_token_classifier_dir}"],
        redact=True,
        prefetch_windows=0,
    )
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    executor = LocalExecutor(config)
    executor.setup()
    try:
        assert sorted(run_all(executor, src, dest)) == ["2026-01-01", "2026-01-02"]
        edit_rows(src / "date=2026-01-02" / "part-0.parquet", [0, 5, 20])
        edited = run_all(executor, src, dest)
    finally:
        executor.teardown()
    assert list(edited) == ["2026-01-02"]
    manifest = edited["2026-01-02"]
    assert (manifest.rows_inferred, manifest.rows_reused, manifest.rows_failed) == (3, 19, 2)
    assert {"topic_label", "kind_label"} <= set(manifest.label_counts)
    table = pq.read_table(dest / "date=2026-01-02" / "part-0.parquet")
    assert {"topic_label", "kind_label", "people_entities", "people_redacted"} <= set(
        table.schema.names
    )
    enrich(src, tmp_path / "reference", config)  # a clean run over the edited input
    assert assert_equivalent(dest, tmp_path / "reference") == 2 * 24
    assert read_manifest(dest / "date=2026-01-01") is not None
