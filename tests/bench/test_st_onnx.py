"""sentence-transformers' own ONNX int8 in `bertetl bench`, run in the peer venv (`make peers`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bertetl.bench import st_onnx
from bertetl.bench.st_onnx_peer import preset
from bertetl.bench.systems import BenchConfig, format_table, run_bench

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two peer processes: an export and a timed run
def test_the_peer_encodes_the_same_texts_and_sits_beside_the_engine(
    tiny_embed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = REPO / st_onnx.PEER_PYTHON
    assert python.is_file(), "make test makes the peer venv: make peers"
    monkeypatch.setenv("BERTETL_CACHE", str(tmp_path / "cache"))
    # the tiny model's tokenizer class is transformers 5's name, unknown to the peer's 4.57;
    # name it as a model from the hub does
    model = tmp_path / "model"
    shutil.copytree(tiny_embed_dir, model)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "BertTokenizerFast"
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    systems = ["engine-e2e", st_onnx.SYSTEM]
    config = BenchConfig(
        models=[str(model)],
        inputs=["reviews"],
        rows=24,
        repeats=2,
        systems=systems,
        device="cpu",
        workdir=str(tmp_path / "work"),
        isolate=False,
        peer_python=str(python),
    )
    report = run_bench(config)
    assert report["errors"] == []
    engine, peer = report["results"]
    assert [engine["system"], peer["system"]] == systems
    assert len(peer["seconds"]) == 2 and peer["rows"] == 24 and peer["peak_rss_mb"] > 0
    assert peer["preset"] == preset()
    assert peer["peer_versions"]["transformers"].startswith("4.")
    # its embeddings, row for row, against the fp32 torch engine's: the texts were the same
    # and in the same order (a shuffled or truncated order falls far below this)
    assert 0.9 <= peer["int8_cosine_mean"] <= 1.0
    ratio = engine["rows_per_s"] / peer["rows_per_s"]
    assert engine["x_sentence-transformers-onnx-int8"] == pytest.approx(ratio, abs=0.01)
    assert "x s-t int8" in format_table(report)


def test_without_the_peer_venv_the_system_is_one_error_naming_make_peers(
    tiny_embed_dir: Path, tmp_path: Path
) -> None:
    config = BenchConfig(
        models=[str(tiny_embed_dir)],
        inputs=["reviews"],
        rows=8,
        repeats=1,
        systems=[st_onnx.SYSTEM],
        device="cpu",
        workdir=str(tmp_path),
        isolate=False,
        peer_python=str(tmp_path / "no-venv" / "bin" / "python"),
    )
    report = run_bench(config)
    assert report["results"] == []
    (error,) = report["errors"]
    assert error.startswith(f"{st_onnx.SYSTEM} / ") and "run `make peers`" in error


def test_a_failing_peer_is_an_error_with_its_last_line(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'ImportError: no module named optimum' >&2\nexit 3\n")
    os.chmod(python, 0o755)
    with pytest.raises(st_onnx.ModelError, match=r"export failed \(exit 3\): ImportError: no"):
        st_onnx.peer_run(["a"], tmp_path, tmp_path, 1, str(python))


def test_a_classifier_has_no_sentence_transformers_int8_peer() -> None:
    from bertetl.bench.systems import TASK_SYSTEMS

    assert st_onnx.SYSTEM in TASK_SYSTEMS["embed"]
    assert st_onnx.SYSTEM not in TASK_SYSTEMS["classify"]
    assert st_onnx.SYSTEM not in BenchConfig().systems  # it needs the peer venv: asked for
