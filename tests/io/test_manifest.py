"""Fingerprints and config hashes decide what a rerun skips."""

from __future__ import annotations

import os
from pathlib import Path

from bertetl.config import EngineConfig
from bertetl.io.manifest import (
    Manifest,
    config_hash,
    fingerprint_file,
    model_fingerprint,
    read_manifest,
    write_manifest,
)


def test_hash_is_reused_only_while_size_and_mtime_hold(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    path.write_bytes(b"one")
    first = fingerprint_file(path, "a.parquet")
    stale = first.model_copy(update={"sha256": "remembered"})
    assert fingerprint_file(path, "a.parquet", stale).sha256 == "remembered"
    path.write_bytes(b"two")
    os.utime(path, ns=(first.mtime_ns + 10, first.mtime_ns + 10))
    assert fingerprint_file(path, "a.parquet", stale).sha256 not in ("remembered", first.sha256)


def test_config_hash_follows_output_options_only() -> None:
    base = EngineConfig(text_column="text", embed_model="m")
    models = {"embed": "abc"}
    same = base.model_copy(update={"batch_tokens": 64, "device": "cpu", "workers": 2})
    assert config_hash(same, models) == config_hash(base, models)
    assert config_hash(base.model_copy(update={"prefix": "x_"}), models) != config_hash(
        base, models
    )
    assert config_hash(base, {"embed": "other"}) != config_hash(base, models)


def test_model_fingerprint_sees_weights_not_metrics(tiny_embed_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_embed_dir, copy)
    before = model_fingerprint(copy)
    (copy / "training_metrics.json").write_text("{}")
    (copy / "eval").mkdir()
    (copy / "eval" / "metrics.json").write_text("{}")  # `bertetl evaluate --out MODEL/eval`
    assert model_fingerprint(copy) == before
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert model_fingerprint(copy) != before


def test_manifest_round_trip_and_garbage(tmp_path: Path) -> None:
    manifest = Manifest(partition_column="date", partition="2026-01-01", rows_in=3, rows_out=3)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    (tmp_path / "_manifest.json").write_text("{not json")
    assert read_manifest(tmp_path) is None
