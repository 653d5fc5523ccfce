"""Hub names through `huggingface_hub` itself: downloads from a stand-in Hub on loopback
(`tests/engine/hub_server.py`, reached through `HF_ENDPOINT`), and offline resolution from the
cache such a download leaves."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bertetl.config import EngineConfig
from bertetl.engine import hub
from bertetl.engine.model_files import model_identity, pinned_spec, resolve_model_dir
from bertetl.errors import ModelError
from bertetl.io.manifest import model_fingerprint
from tests.engine.hub_server import FakeHub, serving

REPO = "tiny-org/tiny-embed"
FIRST, SECOND = "a" * 40, "b" * 40


@pytest.fixture
def fake_hub(tiny_embed_dir: Path, tmp_path: Path, monkeypatch) -> Iterator[FakeHub]:
    """The tiny embedding model on a stand-in Hub: `main` at SECOND, tag `v1` at FIRST (the
    same files plus a pickle copy of the weights, which must never be fetched)."""
    first = tmp_path / "first"
    shutil.copytree(tiny_embed_dir, first)
    (first / "pytorch_model.bin").write_bytes(b"not fetched")
    (first / "README.md").write_text("not fetched either")
    second = tmp_path / "second"
    shutil.copytree(tiny_embed_dir, second)
    (second / "sentence_bert_config.json").write_text('{"max_seq_length": 40}')
    fake = FakeHub()
    fake.add(REPO, first, FIRST, refs=("v1",))
    fake.add(REPO, second, SECOND, refs=("main",))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub._resolved.clear()
    with serving(fake):
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake
    hub._resolved.clear()


def test_download_fetches_what_loading_needs_at_the_asked_revision(fake_hub: FakeHub) -> None:
    path = resolve_model_dir(f"{REPO}@v1")
    cache = Path(hub.hub_cache())
    assert path == cache / "models--tiny-org--tiny-embed" / "snapshots" / FIRST
    assert (cache / "models--tiny-org--tiny-embed" / "refs" / "v1").read_text() == FIRST
    fetched = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert "pytorch_model.bin" not in fetched and "README.md" not in fetched
    assert {"config.json", "model.safetensors", "modules.json", "1_Pooling/config.json"} <= set(
        fetched
    )
    assert pinned_spec(f"{REPO}@v1") == f"{REPO}@{FIRST}"
    assert resolve_model_dir(REPO).name == SECOND  # unpinned: main


def test_identity_names_the_commit_and_changes_with_it(fake_hub: FakeHub) -> None:
    first, second = model_identity(f"{REPO}@v1"), model_identity(REPO)
    assert first == f"hub:{REPO}@{FIRST}:{model_fingerprint(resolve_model_dir(f'{REPO}@v1'))}"
    assert second.startswith(f"hub:{REPO}@{SECOND}:") and first != second


def test_a_name_resolves_once_per_process(fake_hub: FakeHub) -> None:
    resolve_model_dir(REPO)
    asked = len(fake_hub.requests)
    fake_hub.refs[REPO]["main"] = FIRST  # upstream moves on mid-run
    assert resolve_model_dir(REPO).name == SECOND and len(fake_hub.requests) == asked


def test_pickle_weights_come_only_with_allow_pickle(fake_hub: FakeHub, tmp_path: Path) -> None:
    path = resolve_model_dir(f"{REPO}@v1", allow_pickle=True)
    assert (path / "pytorch_model.bin").read_bytes() == b"not fetched"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tiny-org/nothing", "Hub model tiny-org/nothing does not exist"),
        (f"{REPO}@v9", f"Hub model {REPO} has no revision 'v9'"),
    ],
)
def test_unknown_names_and_revisions_are_one_line(
    fake_hub: FakeHub, spec: str, message: str
) -> None:
    with pytest.raises(ModelError, match=message) as raised:
        resolve_model_dir(spec)
    assert "\n" not in str(raised.value)


def test_offline_resolution_from_the_cache_a_download_left(
    fake_hub: FakeHub, monkeypatch, tiny_embed_dir: Path
) -> None:
    online = resolve_model_dir(f"{REPO}@v1")
    resolve_model_dir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    hub._resolved.clear()
    asked = len(fake_hub.requests)
    assert resolve_model_dir(f"{REPO}@v1") == online  # by tag, through refs/v1
    assert resolve_model_dir(f"{REPO}@{FIRST}") == online  # pinned to a commit
    assert resolve_model_dir(REPO).name == SECOND  # unpinned: refs/main
    assert len(fake_hub.requests) == asked
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set") as raised:
        resolve_model_dir("tiny-org/never-fetched")
    assert "tiny-org/never-fetched" in str(raised.value) and "\n" not in str(raised.value)


def test_a_hub_model_embeds_as_its_local_folder_does(
    fake_hub: FakeHub, tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from bertetl.engine.pipeline import Pipeline
    from bertetl.runs.enrich import enrich

    src = write_table({"text": ["hello world", "a movie that was good"]})
    outputs = {}
    for name, spec in (("hub", f"{REPO}@v1"), ("local", str(tiny_embed_dir))):
        config = EngineConfig(text_column="text", embed_model=spec, device="cpu")
        enrich(src, tmp_path / name, config)
        outputs[name] = np.stack(pq.read_table(tmp_path / name).column("embedding").to_numpy())
    np.testing.assert_allclose(outputs["hub"], outputs["local"], atol=1e-6)
    pipeline = Pipeline(EngineConfig(text_column="text", embed_model=f"{REPO}@v1"))
    assert pipeline.absolute_config().embed_model == f"{REPO}@{FIRST}"


def test_local_paths_are_not_hub_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sentiment").mkdir(parents=True)
    assert hub.parse_hub_name("models/sentiment") is None
    assert hub.parse_hub_name("./x/y") is None and hub.parse_hub_name("s3://b/m") is None
    assert hub.parse_hub_name("minilm") is None
    assert hub.parse_hub_name("BAAI/bge-small-en-v1.5@v1.0") == hub.HubModel(
        "BAAI/bge-small-en-v1.5", "v1.0"
    )


def test_hf_home_places_the_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache() == tmp_path / "home" / "hub"


def test_the_cli_takes_hub_names_and_the_new_options(
    fake_hub: FakeHub, write_table, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from tests.cli.test_cli import enrich_cli

    src = write_table({"text": ["hello world", "a movie that was good", "bad film"]})
    run = enrich_cli(
        src,
        tmp_path / "out",
        *("--embed-model", f"{REPO}@v1", "--embed-dim", "16", "--embed-precision", "ubinary"),
        *("--prompt", "query: ", "--device", "cpu"),
    )
    assert run.returncode == 0, run.stderr
    column = pq.read_table(tmp_path / "out").column("embedding")
    assert column.type.value_type == pa.uint8() and column.type.list_size == 2  # 16 bits
    run = enrich_cli(src, tmp_path / "again", "--embed-model", f"{REPO}@v9")
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [f"error: Hub model {REPO} has no revision 'v9'"]
