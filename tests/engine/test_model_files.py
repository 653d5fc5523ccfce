from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bertetl.engine.model_files import PoolingSpec, max_length_for, read_pooling, resolve_model_dir
from bertetl.errors import ModelError


def test_minilm_alias_resolves_to_the_packaged_model() -> None:
    path = resolve_model_dir("minilm")
    assert (path / "model.safetensors").is_file()
    assert read_pooling(path) == PoolingSpec(mode="mean", normalize=True)
    assert max_length_for(path) == 256


def test_missing_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"{tmp_path / 'nope'} does not exist"):
        resolve_model_dir(str(tmp_path / "nope"))


def test_file_is_not_a_model_dir(tmp_path: Path) -> None:
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelError, match="is not a directory"):
        resolve_model_dir(str(tmp_path / "weights.txt"))


def test_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"config\.json is missing"):
        resolve_model_dir(str(tmp_path))


def test_pickle_weights_are_refused(tiny_embed_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "pickled"
    shutil.copytree(tiny_embed_dir, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"pickle payload")
    with pytest.raises(ModelError, match=r"only pickle weights \(pytorch_model.bin\)"):
        resolve_model_dir(str(model))


def test_missing_tokenizer_is_named(tiny_embed_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "no-tok"
    shutil.copytree(tiny_embed_dir, model)
    (model / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="no tokenizer"):
        resolve_model_dir(str(model))


@pytest.mark.parametrize(
    "config,mode",
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_max_tokens": True}, "max"),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, "mean_sqrt_len"),
        ({"pooling_mode": "cls"}, "cls"),
    ],
)
def test_pooling_modes_are_read(tmp_path: Path, config: dict, mode: str) -> None:
    modules = [
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert read_pooling(tmp_path) == PoolingSpec(mode=mode, normalize=False)


def test_unsupported_module_is_named(tmp_path: Path) -> None:
    # Dense modules are supported since issue 34 (tests/engine/test_st_fidelity.py); LSTM is not
    modules = [{"path": "2_LSTM", "type": "sentence_transformers.models.LSTM"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelError, match="LSTM is not supported"):
        read_pooling(tmp_path)


def test_no_modules_json_means_mean_pooling(tmp_path: Path) -> None:
    assert read_pooling(tmp_path) == PoolingSpec(mode="mean", normalize=False)
