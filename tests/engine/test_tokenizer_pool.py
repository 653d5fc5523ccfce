"""`--tokenizers N`: validation and tokenization in worker processes give what the prefetch
thread gives, file for file and counter for counter."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import ConfigError
from bertetl.executor_registry import LocalOptions
from bertetl.executors.local import resolve_tokenizers
from bertetl.runs.enrich import enrich
from tests.conftest import TEXTS


def _texts(rows: int) -> list[str | None]:
    """Varied texts (long ones among them, cut at the model's 48 tokens), a null and a blank."""
    texts: list[str | None] = [f"{TEXTS[i % len(TEXTS)]} row {i}" for i in range(rows)]
    texts[5], texts[11] = None, "  "
    return texts


def _run(
    source: Path, dest: Path, tokenizers: int, **engine: object
) -> tuple[pa.Table, dict[str, tuple[int, int, int]], int]:
    config = EngineConfig(
        text_column="text",
        device="cpu",
        window_rows=7,  # 9 windows: the pool must give them back in order
        token_stats=True,
        tokenizers=tokenizers,
        **engine,
    )
    report = enrich(source, dest, config)
    counters = {
        name: (c.rows, c.batches, c.real_tokens)
        for name, c in report.stages.items()
        if name.startswith(("validate", "tokenize", "ner-tokenize"))
    }
    return pq.read_table(dest), counters, sum(f.rows_truncated for f in report.files)


@pytest.mark.slow  # spawns tokenizer processes
def test_pool_gives_the_threads_output_and_counters(
    tiny_embed_dir: Path, tiny_token_classifier_dir: Path, write_table, tmp_path: Path
) -> None:
    texts = _texts(60)
    source = write_table({"id": list(range(len(texts))), "text": texts})
    before = set(multiprocessing.active_children())
    models = {"embed_model": str(tiny_embed_dir), "ner": [f"who={tiny_token_classifier_dir}"]}

    thread, thread_counters, thread_truncated = _run(source, tmp_path / "thread", 0, **models)
    pooled, pooled_counters, pooled_truncated = _run(source, tmp_path / "pool", 2, **models)

    assert pooled.equals(thread)  # every column: originals, embeddings, entities, stats
    assert pooled.column("id").to_pylist() == list(range(len(texts)))
    assert pooled.column("enrich_error").null_count == len(texts) - 2
    assert pooled_counters == thread_counters
    assert {"validate", "tokenize", "ner-tokenize"} <= set(pooled_counters)
    assert pooled_counters["tokenize"][0] == len(texts)
    assert pooled_truncated == thread_truncated > 0
    # the workers stop with the run
    assert set(multiprocessing.active_children()) == before


def test_tokenizers_is_a_local_executor_option() -> None:
    config = EngineConfig(text_column="text", embed_model="m", tokenizers=3)
    assert config.executor == LocalOptions(tokenizers=3)
    assert resolve_tokenizers(config, 1) == 3
    on_cpu = EngineConfig(text_column="text", embed_model="m", device="cpu")
    assert resolve_tokenizers(on_cpu, 1) == 0  # the model needs every core
    with pytest.raises((ConfigError, ValueError), match="--ray-tokenizers"):
        EngineConfig(text_column="text", embed_model="m", executor="ray", tokenizers=2)
    with pytest.raises(ValueError, match="need --executor ray"):
        EngineConfig(text_column="text", embed_model="m", ray_tokenizers=2)


@pytest.mark.slow
def test_one_pool_serves_every_file_of_a_run(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """The pool outlives each file's prefetch thread (the thread that feeds it): the workers
    must not be tied to it, or the second file finds them gone."""
    for part in range(3):
        texts = _texts(20 + part)
        write_table({"text": texts}, f"src/part-{part}.parquet")
    source = tmp_path / "src"
    pooled, _, _ = _run(source, tmp_path / "pool", 2, embed_model=str(tiny_embed_dir))
    thread, _, _ = _run(source, tmp_path / "thread", 0, embed_model=str(tiny_embed_dir))
    assert pooled.num_rows == 63
    assert pooled.sort_by("text").equals(thread.sort_by("text"))


@pytest.mark.slow
def test_a_dead_tokenizer_process_costs_no_window(
    tiny_embed_dir: Path, write_table, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool worker SIGKILLed (as the OOM killer would) between files: the pool notices in
    the next file or the one after (when is up to the executor's own thread), their windows
    not yet prepared are prepared in this process, a later file gets a fresh pool, and every
    output equals the thread's."""
    import os
    import signal

    import pyarrow.parquet as pq

    from bertetl.engine.pipeline import Pipeline
    from bertetl.io.read import SourceFile

    paths = [write_table({"text": _texts(30 + i)}, f"src/part-{i}.parquet") for i in range(4)]
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), window_rows=7)
    thread = Pipeline(config)
    thread.setup()
    before = set(multiprocessing.active_children())
    pooled = Pipeline(config)
    pooled.setup()
    pooled.start_tokenizer_pool(2)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    try:
        for i, path in enumerate(paths):
            if i == 1:
                victim = next(iter(workers))
                os.kill(victim.pid, signal.SIGKILL)
                victim.join(30)  # dead before the file starts
            source = SourceFile(str(path), path.name)
            for name, pipeline in (("thread", thread), ("pool", pooled)):
                result = pipeline.run_file(
                    source, tmp_path / name / path.name, pq.read_schema(path)
                )
                assert result.error is None and result.rows == 30 + i
            assert pq.read_table(tmp_path / "pool" / path.name).equals(
                pq.read_table(tmp_path / "thread" / path.name)
            )
            if i == 2:
                assert "a tokenizer process died" in caplog.text  # noticed by now
        assert set(multiprocessing.active_children()) - before - workers  # a fresh pool
        stages = {s.name: s.counters.rows for s in pooled.cpu_stages}
        expected = {s.name: s.counters.rows for s in thread.cpu_stages}
        assert stages == expected == {"validate": 126, "tokenize": 126}
    finally:
        pooled.teardown()
        thread.teardown()
    assert set(multiprocessing.active_children()) == before


def _no_pipeline(config: EngineConfig) -> None:
    """A worker set-up that fails (module level: the spawned worker imports it)."""
    raise RuntimeError("no tokenizer here")


@pytest.mark.slow
def test_a_worker_that_cannot_start_is_one_error_at_start() -> None:
    from bertetl.engine.tokenizer_pool import TokenizerPool
    from bertetl.errors import ModelError

    before = set(multiprocessing.active_children())
    pool = TokenizerPool(_no_pipeline, EngineConfig(text_column="text", embed_model="m"), 2)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="could not start"):
        pool.start()
    assert set(multiprocessing.active_children()) == before  # nothing left running


@pytest.mark.slow  # spawns a tokenizer process
def test_workers_build_the_parents_tokenizer_without_torch(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """A worker tokenizes with the tokenizer the parent loaded (its snapshot), so it never
    imports transformers, nor through it torch: its memory maps hold no libtorch."""
    from bertetl.engine.pipeline import Pipeline

    texts = _texts(30)
    batch = pa.record_batch({"text": pa.array(texts, pa.string())})
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), window_rows=7)
    inline = Pipeline(config)
    inline.setup_tokenizers()
    want = pa.Table.from_batches(list(inline.prepare([batch])))
    pooled = Pipeline(config)
    pooled.start_tokenizer_pool(1)
    try:
        got = pa.Table.from_batches(list(pooled.prepare([batch])))
        assert pooled.tokenizer_pool is not None and pooled.tokenizer_pool._pool is not None
        workers = list(pooled.tokenizer_pool._pool._processes)
        assert len(workers) == 1
        maps = Path(f"/proc/{workers[0]}/maps").read_text()
        assert "libtorch" not in maps
    finally:
        pooled.teardown()
    assert got.equals(want)


def test_a_device_that_is_not_there_is_refused_before_dest_is_made(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """With `--tokenizers N` given, no default is worked out from the device, yet the device
    is still checked before DEST is locked (and made), as without it."""
    import torch

    from bertetl.errors import ModelError

    if torch.cuda.is_available():
        pytest.skip("checks the error on a machine without CUDA")
    src = write_table({"text": ["a b c"]})
    for tokenizers in (None, 1):
        config = EngineConfig(
            text_column="text",
            embed_model=str(tiny_embed_dir),
            device="cuda",
            tokenizers=tokenizers,
        )
        with pytest.raises(ModelError, match="no CUDA device is available"):
            enrich(src, tmp_path / "out", config)
        assert not (tmp_path / "out").exists()
