"""Ray's tokenize actor, built as Ray builds it (its constructor arguments), in a fresh process."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from bertetl.config import EngineConfig
from bertetl.engine.pipeline import Pipeline

pytestmark = pytest.mark.ray

ACTOR = """
import pickle, sys
import pyarrow as pa
from bertetl.executors.ray.actors import TokenizeActor
config, errors_dir, snapshots, table = pickle.loads(sys.stdin.buffer.read())
actor = TokenizeActor(config, errors_dir, None, snapshots)
out = pa.Table.from_batches(list(actor.pipeline.prepare(table.to_batches())))
sys.stdout.buffer.write(pickle.dumps((out, "torch" in sys.modules, "transformers" in sys.modules)))
"""


def test_tokenize_actor_uses_the_drivers_tokenizer_without_torch(
    tiny_embed_dir: Path, tmp_path: Path
) -> None:
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), executor="ray")
    driver = Pipeline(config)
    table = pa.table({"text": pa.array(["hello world", None, "the quick fox " * 20], pa.string())})
    arguments = (config, str(tmp_path), driver.tokenizer_snapshots(), table)
    done = subprocess.run(
        [sys.executable, "-c", ACTOR], input=pickle.dumps(arguments), capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out, torch_loaded, transformers_loaded = pickle.loads(done.stdout)
    assert not torch_loaded and not transformers_loaded
    assert out.equals(pa.Table.from_batches(list(driver.prepare(table.to_batches()))))
