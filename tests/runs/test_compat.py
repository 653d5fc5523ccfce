"""Behaviour pinned across refactors: the config hash users' manifests hold, and the output
files of a fixed run (recorded before the package layout changed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.config import EngineConfig
from bertetl.io.manifest import config_hash

DATA = Path(__file__).resolve().parents[1] / "data"
#: The output of `_run` on `text_table`, written by the code as it was at 8cecd4f, with the
#: committed tiny models (built by conftest's helpers once; committed so the run is exact).
GOLDEN = DATA / "golden_enrich.parquet"
MODELS = DATA / "golden-models"


def test_config_hash_is_pinned() -> None:
    """A changed hash would make every user's next nightly run re-enrich every partition."""
    models = {"embed": "a" * 64, "classify": "b" * 64}
    config = EngineConfig(
        text_column="text", embed_model="minilm", classify_model="/models/sentiment"
    )
    assert config_hash(config, models) == (
        "a15361da94ae3b18f9c97fae6e1001010b26a3aa27acc2c36e289fd943332b00"
    )
    config = EngineConfig(
        text_column="body",
        embed_model="minilm",
        prefix="m_",
        max_length=64,
        include_scores=True,
        multi_label_threshold=0.3,
        dtype="float32",
        quantize="int8",
        device="cpu",
        batch_tokens=1000,
        workers=2,
    )
    assert config_hash(config, {"embed": "c" * 64}) == (
        "b71173508de0e3754983f6d730c98a528ec2eaf0d6c48ee8368e253bca8d4697"
    )


def test_manifests_written_before_the_means_still_load(tmp_path: Path) -> None:
    """A version-2 manifest without `embedding_means` and `score_means` reads with them
    empty (no drift figures for it), and the new fields leave the version alone."""
    from bertetl.io.manifest import MANIFEST_VERSION, read_manifest

    (tmp_path / "_manifest.json").write_text(
        '{"version": 2, "partition_column": "date", "partition": "2026-01-01", '
        '"rows_in": 3, "rows_out": 3, "label_counts": {"label": {"pos": 3}}, '
        '"config_hash": "abc"}'
    )
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest.label_counts == {"label": {"pos": 3}}
    assert manifest.embedding_means == {} and manifest.score_means == {}
    assert MANIFEST_VERSION == manifest.version == 2


def _run(source: Path, dest: Path, embed: Path, classify: Path) -> pa.Table:
    from bertetl import enrich

    config = EngineConfig(
        text_column="text",
        embed_model=str(embed),
        classify_model=str(classify),
        include_scores=True,
        device="cpu",
        window_rows=4,
        max_batch_rows=3,
    )
    enrich(str(source), str(dest), config)
    return pq.read_table(dest / "part-0.parquet")


def test_output_matches_the_recorded_run(tmp_path: Path, write_table, text_table: pa.Table) -> None:
    table = text_table.set_column(1, "text", pa.array([*text_table["text"].to_pylist()[:-1], None]))
    source = write_table(table).parent
    out = _run(source, tmp_path / "out", MODELS / "embed", MODELS / "classify")
    golden = pq.read_table(GOLDEN)
    assert out.schema == golden.schema
    for name in golden.column_names:
        got, want = out[name], golden[name]
        if name in ("embedding", "score", "scores"):
            assert got.is_null().equals(want.is_null()), name
            for a, b in zip(got.to_pylist(), want.to_pylist(), strict=True):
                if b is not None:
                    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
        else:
            assert got.equals(want), name


def test_long_text_options_join_the_hash_only_when_they_shape_the_output() -> None:
    base = EngineConfig(text_column="text", embed_model="minilm")
    hashes = {
        name: config_hash(base.model_copy(update=update), {"embed": "a" * 64})
        for name, update in {
            "default": {},
            "overlap alone": {"window_overlap": 8, "max_windows": 3},
            "window": {"long_text": "window"},
            "window, overlap 8": {"long_text": "window", "window_overlap": 8},
            "window, 3 windows": {"long_text": "window", "max_windows": 3},
            "stats": {"token_stats": True},
        }.items()
    }
    assert hashes["overlap alone"] == hashes["default"]  # truncate mode ignores them
    assert len(set(hashes.values()) - {hashes["default"]}) == 4


def test_heads_join_the_hash_only_when_present(tmp_path: Path) -> None:
    """Adding no head keeps the old hash; each head, a description edit and each NER option
    change it."""
    labels = tmp_path / "labels.yaml"
    labels.write_text("good: a good film\nbad: a bad film\n")
    base = EngineConfig(text_column="text", embed_model="minilm")
    models = {"embed": "a" * 64}

    def hashed(**update: object) -> str:
        return config_hash(EngineConfig(**{**base.model_dump(), **update}), models)

    hashes = {
        "default": hashed(),
        "zero-shot": hashed(zero_shot=[f"kind={labels}"]),
        "ner": hashed(ner=["people=/models/ner"]),
        "ner first": hashed(ner=["people=/models/ner"], ner_aggregation="first"),
        "ner labels": hashed(ner=["people=/models/ner"], ner_labels="PER"),
        "ner redact": hashed(ner=["people=/models/ner"], redact=True),
    }
    assert config_hash(base, models) == hashes["default"]
    assert len(set(hashes.values())) == len(hashes)
    labels.write_text("good: a great film\nbad: a bad film\n")
    assert hashed(zero_shot=[f"kind={labels}"]) != hashes["zero-shot"]
