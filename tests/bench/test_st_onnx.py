"""sentence-transformers' own ONNX int8 in `bertetl bench`, run in the peer venv (`make peers`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bertetl.bench import st_onnx
from bertetl.bench.st_onnx_peer import TOKENIZER_CLASSES, preset
from bertetl.bench.systems import BenchConfig, format_table, run_bench
from bertetl.errors import ConfigError, ModelError

REPO = Path(__file__).resolve().parents[2]


def _config(model: Path, tmp_path: Path, **fields: object) -> BenchConfig:
    return BenchConfig(
        models=[str(model)],
        inputs=["reviews"],
        device="cpu",
        workdir=str(tmp_path / "work"),
        isolate=False,
        **fields,
    )


@pytest.mark.slow  # two peer processes: an export and a timed run
def test_the_peer_embeds_as_the_engine_does_and_sits_beside_it(
    tiny_embed_dir: Path, tmp_path: Path
) -> None:
    python = REPO / st_onnx.PEER_PYTHON
    assert python.is_file(), "make test makes the peer venv: make peers"
    # the tiny model is saved by transformers 5, whose tokenizer class 4.57 does not know
    saved = json.loads((tiny_embed_dir / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] in TOKENIZER_CLASSES
    systems = ["engine-e2e", st_onnx.SYSTEM]
    config = _config(
        tiny_embed_dir, tmp_path, rows=24, repeats=2, systems=systems, peer_python=str(python)
    )
    report = run_bench(config)
    assert report["errors"] == []
    engine, peer = report["results"]
    assert [engine["system"], peer["system"]] == systems
    assert len(peer["seconds"]) == 2 and peer["rows"] == 24 and peer["peak_rss_mb"] > 0
    assert peer["preset"] == preset()
    assert peer["peer_versions"]["transformers"].startswith("4.")
    # its fp32 ONNX model against the fp32 torch engine, row for row: the same texts, in the
    # same order, cut at the same length (different rows of the tiny model are at about 0.88)
    assert peer["peer_fp32_cosine_min"] >= 0.999
    assert 0.9 <= peer["int8_cosine_mean"] < 1.0  # quantized: close, not equal
    assert engine["x_sentence-transformers-onnx-int8"] > 0
    assert "x s-t int8" in format_table(report)
    # one export, under the model's key, and no staging folder left behind
    exports = sorted(p.name for p in (tmp_path / "work").glob("st-onnx-int8-*"))
    assert exports == [st_onnx.export_folder(tiny_embed_dir, tmp_path / "work").name]


def test_without_the_peer_venv_the_bench_stops_before_any_system(
    tiny_embed_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-venv" / "bin" / "python"
    config = _config(
        tiny_embed_dir,
        tmp_path,
        rows=8,
        systems=["engine-e2e", st_onnx.SYSTEM],
        peer_python=str(missing),
    )
    with pytest.raises(ConfigError, match=r"no-venv/bin/python is missing .*run `make peers`"):
        run_bench(config)
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_the_peer_and_window_mode_are_refused_together(
    tiny_embed_dir: Path, tmp_path: Path
) -> None:
    python = tmp_path / "python"
    python.touch()
    config = _config(
        tiny_embed_dir,
        tmp_path,
        systems=[st_onnx.SYSTEM],
        peer_python=str(python),
        engine_options={"long_text": "window"},
    )
    with pytest.raises(ConfigError, match="truncates long texts"):
        run_bench(config)


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("echo 'ImportError: no module named optimum' >&2; exit 3", r"\(exit 3\): ImportError"),
        ("echo 'not json'", r"its last line is not JSON: 'not json'"),
    ],
)
def test_a_failing_peer_is_one_error_with_its_last_line(
    tmp_path: Path, script: str, error: str
) -> None:
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\n{script}\n")
    os.chmod(python, 0o755)
    with pytest.raises(ModelError, match=rf"{st_onnx.SYSTEM} export.*{error}"):
        st_onnx.peer_run(["a"], tmp_path, tmp_path, 1, str(python))


def test_a_classifier_has_no_sentence_transformers_int8_peer() -> None:
    from bertetl.bench.systems import TASK_SYSTEMS

    assert st_onnx.SYSTEM in TASK_SYSTEMS["embed"]
    assert st_onnx.SYSTEM not in TASK_SYSTEMS["classify"]
    assert st_onnx.SYSTEM not in BenchConfig().systems  # it needs the peer venv: asked for
