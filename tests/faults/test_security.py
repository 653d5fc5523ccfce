"""Untrusted models, partition values and SQL: nothing runs, nothing escapes DEST."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import InputError, ModelError
from bertetl.executors.local import LocalExecutor
from bertetl.reports.sql import run_query
from bertetl.runs.enrich import enrich
from bertetl.runs.plan import plan_partitions
from bertetl.runs.staged import enrich_partition


class _Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _model_without_weights(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()
    return target


def test_malicious_pickle_is_never_loaded(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    model = _model_without_weights(tiny_embed_dir, tmp_path / "evil-model")
    marker = tmp_path / "marker"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    src = write_table({"text": ["hello world"]})
    with pytest.raises(ModelError, match="pickle"):
        enrich(src, tmp_path / "out", EngineConfig(text_column="text", embed_model=str(model)))
    assert not marker.exists()
    # Even when the user allows pickle weights, they load with torch's weights-only unpickler.
    config = EngineConfig(text_column="text", embed_model=str(model), allow_pickle=True)
    with pytest.raises(ModelError):
        enrich(src, tmp_path / "out2", config)
    assert not marker.exists()


def test_allow_pickle_loads_trusted_pickle_weights(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    import torch
    from transformers import BertModel

    model = _model_without_weights(tiny_embed_dir, tmp_path / "pickled")
    state = BertModel.from_pretrained(tiny_embed_dir).state_dict()
    torch.save(state, model / "pytorch_model.bin")
    src = write_table({"text": ["hello world", "a movie that was good"]})
    enrich(
        src, tmp_path / "safe", EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    )
    config = EngineConfig(text_column="text", embed_model=str(model), allow_pickle=True)
    enrich(src, tmp_path / "pickled-out", config)
    safe = pq.read_table(tmp_path / "safe" / src.name).column("embedding").to_pylist()
    loaded = pq.read_table(tmp_path / "pickled-out" / src.name).column("embedding").to_pylist()
    np.testing.assert_allclose(np.array(loaded), np.array(safe), atol=1e-6)


def test_remote_code_in_a_model_dir_never_runs(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    model = tmp_path / "remote-code"
    shutil.copytree(tiny_embed_dir, model)
    marker = tmp_path / "marker"
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (model / "config.json").write_text(json.dumps(config))
    src = write_table({"text": ["hello world"]})
    try:
        enrich(src, tmp_path / "out", EngineConfig(text_column="text", embed_model=str(model)))
    except ModelError:
        pass  # refusing is fine too; running the code is not
    assert not marker.exists()


def test_hub_ids_and_missing_paths_are_refused(write_table, tmp_path: Path) -> None:
    src = write_table({"text": ["hello"]})
    for spec in ("sentence-transformers/all-MiniLM-L6-v2", str(tmp_path / "nowhere")):
        with pytest.raises(ModelError, match="does not exist"):
            enrich(src, tmp_path / "out", EngineConfig(text_column="text", embed_model=spec))


@pytest.mark.parametrize(
    "folder",
    ["date=..%2F..%2Fescaped", "date=%2Fetc%2Fescaped", "date=x' OR '1'='1", "date=..", "date=."],
)
def test_hostile_partition_values_stay_inside_dest(
    folder: str, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    """Partition values (decoded from folder names) are data: they never become paths
    outside DEST or SQL text."""
    src = tmp_path / "deep" / "src"
    (src / folder).mkdir(parents=True)
    pq.write_table(pa.table({"text": ["one", "two"]}), src / folder / "part-0.parquet")
    dest = tmp_path / "deep" / "dest"
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    pipeline = LocalExecutor(config)
    pipeline.setup()
    plan = plan_partitions(src, dest, "date", config)
    (item,) = plan.partitions
    manifest = enrich_partition(pipeline, item, dest, plan)
    assert manifest.rows_out == 2
    written = [p for p in tmp_path.rglob("*.parquet") if not p.is_relative_to(src)]
    assert written and all(p.resolve().is_relative_to(dest.resolve()) for p in written)
    rerun = plan_partitions(src, dest, "date", config)
    assert [(p.value, p.action) for p in rerun.partitions] == [(item.value, "skip")]


def test_partition_folder_escaping_dest_is_refused(tmp_path: Path) -> None:
    from bertetl.io.partitions import Partition, dest_folder

    for folder in ("../outside", "/etc", "."):
        with pytest.raises(InputError, match="outside"):
            dest_folder(tmp_path / "dest", Partition("date", "x", folder, ()))


def test_sql_parameters_are_values_not_text() -> None:
    import polars as pl

    hostile = "'; DROP TABLE manifests; SELECT '"
    source = pl.DataFrame({"partition": [hostile], "input_fingerprint": ["1"]})
    manifests = pl.DataFrame(
        {
            "partition": [hostile],
            "input_fingerprint": ["1"],
            "config_hash": [hostile],
            "damage": [None],
        }
    )
    result = run_query(
        "partitions_to_run",
        {"source": source, "manifests": manifests},
        {"config_hash": hostile, "force": False},
    )
    assert result.rows() == [(hostile, "skip", "unchanged")]
