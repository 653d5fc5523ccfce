"""`bertetl bench host`: the engine's host path, with the device's work nulled.

Everything a GPU run does on the host's CPU cores stays real: `Pipeline.run_file` reads the
Parquet file, validates, tokenizes (in the prefetch thread), batches, pads, copies, builds the
output columns and writes Parquet, committed as the engine commits. Only the forward pass (the
encoder and its pooling or head, which on a GPU run on the device) is replaced by a null model
that returns the stage's real output shape at once. Its outputs are random unit vectors (or
random probabilities), not zeros: zeros would compress to nothing and understate the write.

Each core count runs in its own spawned process born with the CPU affinity of the first k
cores of this one, so every thread pool (torch's, Arrow's, the tokenizer's rayon pool) sizes
itself to k; torch's threads and Arrow's CPU count are set to k as well. Read and write are
timed by wrapping the `stream` that the pipeline module uses (in that process only) and by
giving `run_file` a timed sink (the sink seam, `bertetl.io.sink`); validate, tokenize and
infer come from the stages' own counters. Read, validate and tokenize run in the prefetch
thread, infer and write on the calling thread, so the stage seconds add up to more than the
wall time where the two overlap.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.bench.child import ChildError, run_in_child
from bertetl.io.write import ParquetSink
from bertetl.results import StageCounters

#: Parquet codecs `--compression` compares (the engine writes zstd).
CODECS = ("zstd", "lz4", "snappy", "none")
#: Rows of real model outputs whose compressed size is set beside the null model's.
REAL_SAMPLE_ROWS = 256
#: Null outputs are drawn from a bank this many rows long (distinct rows within any page).
BANK_ROWS = 8192


class NullForward:
    """Stands in for an encoder stage's `_forward`: rows of the stage's output width at once,
    taken in turn from a bank of random unit vectors (embeddings) or probabilities (labels)."""

    def __init__(self, width: int, kind: str, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        if kind == "embed":
            bank = rng.standard_normal((BANK_ROWS, width), dtype=np.float32)
            bank /= np.linalg.norm(bank, axis=1, keepdims=True)
        else:
            bank = rng.dirichlet(np.ones(width), size=BANK_ROWS).astype(np.float32)
        self.bank = bank
        self.offset = 0

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        return self._rows(input_ids.shape[0], input_ids.device)

    def packed(self, input_ids: Any, position_ids: Any, starts: Any, longest: int) -> Any:
        """The same for the unpadded path's packed row (`_forward_packed`)."""
        return self._rows(starts.shape[0] - 1, input_ids.device)

    def _rows(self, count: int, device: Any) -> Any:
        import torch

        rows = (self.offset + np.arange(count)) % BANK_ROWS
        self.offset = int(rows[-1]) + 1 if len(rows) else self.offset
        return torch.from_numpy(self.bank[rows]).to(device)


def null_models(pipeline: Any) -> None:
    """Replace each loaded model stage's forward pass, padded and packed, with a
    `NullForward` (after `setup`)."""
    for number, stage in enumerate(pipeline.models):
        null = NullForward(stage.width, stage.kind, seed=number)
        stage._forward = null
        stage._forward_packed = null.packed


def _timed_stream(stream: Any, counters: StageCounters) -> Any:
    """`stream` whose windows are counted and timed into `counters` (the read stage)."""

    def timed(*args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        windows = iter(stream(*args, **kwargs))
        while True:
            started = time.perf_counter()
            window = next(windows, None)
            counters.seconds += time.perf_counter() - started
            if window is None:
                return
            counters.rows += window.num_rows
            counters.batches += 1
            yield window

    return timed


def _timed_sink(sink_class: type, counters: StageCounters, compression: str) -> type:
    """A `ParquetSink` that writes with `compression` and times open, write and commit."""

    class TimedSink(sink_class):  # type: ignore[misc,valid-type]
        def __init__(self, path: Any, schema: pa.Schema) -> None:
            super().__init__(path, schema, compression=compression)

        def open(self) -> Any:
            started = time.perf_counter()
            try:
                return super().open()
            finally:
                counters.seconds += time.perf_counter() - started

        def write(self, batch: pa.RecordBatch) -> None:
            started = time.perf_counter()
            try:
                super().write(batch)
            finally:
                counters.seconds += time.perf_counter() - started
            counters.rows += batch.num_rows
            counters.batches += 1

        def commit(self) -> None:
            started = time.perf_counter()
            try:
                super().commit()
            finally:
                counters.seconds += time.perf_counter() - started

    return TimedSink


def _source_file(texts: list[str], workdir: Path) -> tuple[Any, pa.Schema]:
    """The texts as one Parquet file (`id`, `text`), as the engine-e2e system writes them."""
    from bertetl.io.read import discover

    src = workdir / f"host-src-{os.getpid()}-{len(texts)}.parquet"
    pq.write_table(pa.table({"id": np.arange(len(texts)), "text": texts}), src)
    (file,) = discover(src)
    return file, pq.read_schema(src)


def _stage_seconds(counters: dict[str, StageCounters], repeats: int) -> dict[str, float]:
    return {name: round(c.seconds / repeats, 4) for name, c in counters.items()}


def _snapshot(pipeline: Any, read: StageCounters, write: StageCounters) -> dict[str, Any]:
    """Copies of the counters by step: read, validate, tokenize (every tokenizer), infer
    (every model stage: pad, copy, the null forward, output columns), write."""
    steps = {"read": [read], "validate": [pipeline.validate]}
    steps["tokenize"] = list(pipeline.tokenizers.values())
    steps["infer"] = pipeline.models
    steps["write"] = [write]
    out = {}
    for name, parts in steps.items():
        total = StageCounters()
        for part in parts:
            total.add(part if isinstance(part, StageCounters) else part.counters)
        out[name] = total
    return out


def _difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, StageCounters]:
    out = {}
    for name, counters in after.items():
        delta = {k: v - getattr(before[name], k) for k, v in asdict(counters).items()}
        out[name] = StageCounters(**delta)
    return out


def host_run(
    texts: list[str],
    pipeline: Any,
    workdir: Path,
    repeats: int,
    compression: str = "zstd",
) -> dict[str, Any]:
    """Time `pipeline.run_file` over the texts (one warm-up on 64 rows, then `repeats` runs),
    with the models nulled; rows/s, tokens/s and per-stage seconds of one run."""
    import bertetl.engine.pipeline as engine_pipeline

    read, write = StageCounters(), StageCounters()
    null_models(pipeline)
    warm_file, warm_schema = _source_file(texts[:64], workdir)
    file, schema = _source_file(texts, workdir)
    target = workdir / f"host-out-{os.getpid()}.parquet"
    with ExitStack() as patches:
        sink = _timed_sink(ParquetSink, write, compression)  # through the sink seam
        stream = _timed_stream(engine_pipeline.stream, read)
        patches.enter_context(mock.patch.object(engine_pipeline, "stream", stream))
        pipeline.run_file(warm_file, target, warm_schema, sink_factory=sink)
        before = _snapshot(pipeline, read, write)
        tokens_before = pipeline.models[0].counters.real_tokens
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = pipeline.run_file(file, target, schema, sink_factory=sink)
            seconds.append(time.perf_counter() - started)
            if result.error:
                raise RuntimeError(result.error)
    counters = _difference(_snapshot(pipeline, read, write), before)
    # tokens the (first) model was given, [CLS]/[SEP] included, as the other systems count
    tokens = (pipeline.models[0].counters.real_tokens - tokens_before) // repeats
    median = statistics.median(seconds)
    return {
        "rows": len(texts),
        "real_tokens": tokens,
        "seconds": [round(s, 4) for s in seconds],
        "median_s": round(median, 4),
        "rows_per_s": round(len(texts) / median, 1),
        "tokens_per_s": round(tokens / median, 1),
        "stage_seconds": _stage_seconds(counters, repeats),
        "output": str(target),
    }


def tokenizer_alone(pipeline: Any, texts: list[str], repeats: int) -> float:
    """Rows/s of the first model's Rust tokenizer alone (`encode_batch_fast` over the texts
    in windows of `window_rows`; median of `repeats` after a warm-up): no Python around it and
    the GIL released, so how it scales with cores is the reference for the host path's scaling
    (not a strict bound: with more cores the host path also overlaps its write). Texts are
    encoded whole: for long ones (over the stage's prefix cutoff) the stage does other work."""
    from bertetl.engine.tokenize import ids_only_encoder

    encode = ids_only_encoder(next(iter(pipeline.tokenizers.values())).snapshot().build())
    step = pipeline.config.window_rows
    windows = [texts[start : start + step] for start in range(0, len(texts), step)]

    def once() -> float:
        started = time.perf_counter()
        for window in windows:
            encode(window, add_special_tokens=False)
        return time.perf_counter() - started

    once()
    return round(len(texts) / statistics.median(once() for _ in range(repeats)), 1)


# ---------------------------------------------------------------- Parquet codecs


def write_options(table: pa.Table, column: str) -> dict[str, dict[str, Any]]:
    """The ways of writing `table` that the codec table compares: each codec as the engine
    writes (pyarrow's defaults: a dictionary tried on every column, the float `column` too),
    then `column` without the dictionary attempt, and with BYTE_STREAM_SPLIT (Parquet's
    encoding for floats: the bytes of each position together, which compress better)."""
    others = [name for name in table.column_names if name != column]
    leaf = f"{column}.list.element"  # Parquet's path of a list column's values
    plain = {"use_dictionary": others}
    return {
        **{codec: {"compression": codec} for codec in CODECS},
        "zstd, no dictionary": {"compression": "zstd", **plain},
        "zstd, byte_stream_split": {
            "compression": "zstd",
            **plain,
            "use_byte_stream_split": [leaf],
        },
        "none, no dictionary": {"compression": "none", **plain},
    }


def _column_bytes(path: Path, column: str) -> int:
    """Compressed bytes of `column` (its leaf columns) in the Parquet file at `path`."""
    metadata = pq.ParquetFile(path).metadata
    return sum(
        group.column(i).total_compressed_size
        for group in (metadata.row_group(g) for g in range(metadata.num_row_groups))
        for i in range(group.num_columns)
        if group.column(i).path_in_schema.split(".")[0] == column
    )


def codec_costs(
    output: Path, real_sample: pa.Array | None, null_sample: pa.Array | None, repeats: int
) -> list[dict[str, Any]]:
    """Per way of writing (`write_options`), on one thread: the time to write the host run's
    output table (all its columns) and read it back, its size, and the embedding column's
    bytes a row; where samples of real and null model outputs are given, the bytes a row of
    each written alone (the null model's random unit vectors should cost what real ones do)."""
    table = pq.read_table(output)
    name = next(f.name for f in table.schema if pa.types.is_fixed_size_list(f.type))
    results = []
    with tempfile.TemporaryDirectory(prefix="bertetl-codecs-") as scratch:
        path = Path(scratch) / "table.parquet"
        for label, options in write_options(table, name).items():
            writes, reads = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                pq.write_table(table, path, **options)
                writes.append(time.perf_counter() - started)
                started = time.perf_counter()
                pq.read_table(path)
                reads.append(time.perf_counter() - started)
            row: dict[str, Any] = {
                "compression": label,
                "write_s": round(statistics.median(writes), 4),
                "write_rows_per_s": round(table.num_rows / statistics.median(writes), 1),
                "read_s": round(statistics.median(reads), 4),
                "file_mb": round(path.stat().st_size / 2**20, 2),
                "embedding_bytes_per_row": round(_column_bytes(path, name) / table.num_rows, 1),
            }
            for kind, sample in (("real", real_sample), ("null", null_sample)):
                if sample is not None:
                    alone = pa.table({name: sample})
                    pq.write_table(alone, path, **write_options(alone, name)[label])
                    row[f"sample_{kind}_bytes_per_row"] = round(
                        _column_bytes(path, name) / len(sample), 1
                    )
            results.append(row)
    return results


def _output_sample(pipeline: Any, texts: list[str]) -> pa.Array:
    """The first output column (e.g. the embedding) of the pipeline over `texts`."""
    (out,) = pipeline.transform([pa.RecordBatch.from_pydict({"text": texts})])
    return out.column(pipeline.models[0].fields()[0].name)


# ---------------------------------------------------------------- per core count


def _limit_threads(cores: int) -> None:
    import torch

    torch.set_num_threads(cores)
    pa.set_cpu_count(cores)


def host_measure(
    pipeline_config: Any,
    texts: list[str],
    workdir: str,
    cores: int,
    repeats: int,
    compressions: list[str],
    measure_codecs: bool,
    tokenizers: tuple[int, ...] = (0,),
) -> dict[str, Any]:
    """One core count: the host path once per codec and tokenizer pool size (`--tokenizers`;
    the other codecs with the first size only); with `measure_codecs` (and an embedding model),
    the codecs' costs on its output, with real model outputs beside the null model's."""
    from bertetl.engine.encoders import EncoderStage
    from bertetl.engine.pipeline import Pipeline

    _limit_threads(cores)
    pipeline = Pipeline(pipeline_config)
    pipeline.setup()
    first = pipeline.models[0]
    assert isinstance(first, EncoderStage)  # the first model stage is always an encoder
    measure_codecs = measure_codecs and first.kind == "embed"
    real = _output_sample(pipeline, texts[:REAL_SAMPLE_ROWS]) if measure_codecs else None
    runs = []
    for index, processes in enumerate(tokenizers):
        pipeline.start_tokenizer_pool(processes)
        try:
            for compression in compressions if index == 0 else compressions[:1]:
                run = host_run(texts, pipeline, Path(workdir), repeats, compression)
                run.update(cores=cores, compression=compression, tokenizers=processes)
                runs.append(run)
        finally:  # its processes stop with each size, also when a run failed
            if pipeline.tokenizer_pool is not None:
                pipeline.tokenizer_pool.close()
                pipeline.tokenizer_pool = None
    out: dict[str, Any] = {
        "runs": runs,
        "tokenizer_rows_per_s": tokenizer_alone(pipeline, texts, repeats),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "affinity": sorted(os.sched_getaffinity(0)),
    }
    if measure_codecs:  # the forward passes are null by now
        null = _output_sample(pipeline, texts[:REAL_SAMPLE_ROWS])
        out["codecs"] = codec_costs(Path(runs[0]["output"]), real, null, repeats)
    pipeline.teardown()
    return out


def pinned(cores: int) -> set[int]:
    """The first `cores` CPUs this process may run on."""
    available = sorted(os.sched_getaffinity(0))
    if cores > len(available):
        raise ValueError(f"--cores {cores}: this process may use only {len(available)} CPUs")
    return set(available[:cores])


def run_pinned(cores: int, args: tuple[Any, ...]) -> dict[str, Any] | str:
    """`host_measure` in a spawned process born with the affinity of `cores` CPUs; its
    error, or how it died, as text."""
    try:
        return run_in_child(
            host_measure, *args, name=f"the process for {cores} cores", cpus=pinned(cores)
        )
    except ChildError as e:
        return str(e)


def host_bench(
    pipeline_config: Any,
    texts: list[str],
    workdir: Path,
    cores: list[int],
    repeats: int,
    compressions: list[str],
    isolate: bool = True,
    tokenizers: tuple[int, ...] = (0,),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Each core count (isolated, pinned) with each tokenizer pool size, with the engine's
    zstd; the other codecs and the codecs' costs at the largest core count. Returns runs,
    codec costs and errors; `x_first_cores` compares the first core count (same pool size),
    `tokenizer_x_first_cores` the same for the tokenizer alone (`tokenizer_alone`), and
    `x_first_tokenizers` the first pool size (same core count)."""
    runs: list[dict[str, Any]] = []
    codecs: list[dict[str, Any]] = []
    errors: list[str] = []
    largest = max(cores)
    first, *others = compressions
    for count in sorted(set(cores)):
        measure = count == largest and bool(others)
        wanted = [first, *others] if count == largest else [first]
        args = (pipeline_config, texts, str(workdir), count, repeats, wanted, measure, tokenizers)
        if isolate:
            outcome = run_pinned(count, args)
        else:
            try:
                outcome = host_measure(*args)
            except Exception as e:  # reported as the isolated run reports it
                outcome = f"{type(e).__name__}: {e}"
        if isinstance(outcome, str):
            errors.append(f"host / {count} cores: {outcome}")
            continue
        for run in outcome["runs"]:
            run["peak_rss_mb"] = outcome["peak_rss_mb"]
            run["cpus"] = outcome["affinity"]
            run["tokenizer_rows_per_s"] = outcome["tokenizer_rows_per_s"]
        runs.extend(outcome["runs"])
        codecs.extend(outcome.get("codecs", []))
    for run in runs:
        if run["compression"] != first:
            continue
        same_pool = [
            r for r in runs if (r["compression"], r["tokenizers"]) == (first, run["tokenizers"])
        ]
        base = min(same_pool, key=lambda r: r["cores"])
        run["x_first_cores"] = round(run["rows_per_s"] / base["rows_per_s"], 3)
        # the same ratio for the tokenizer alone: the most the cores could give the host path
        run["tokenizer_x_first_cores"] = round(
            run["tokenizer_rows_per_s"] / base["tokenizer_rows_per_s"], 3
        )
        run["per_core_efficiency"] = round(run["x_first_cores"] * base["cores"] / run["cores"], 3)
        no_pool = next(
            r
            for r in runs
            if (r["compression"], r["cores"], r["tokenizers"])
            == (first, run["cores"], tokenizers[0])
        )
        run["x_first_tokenizers"] = round(run["rows_per_s"] / no_pool["rows_per_s"], 3)
    return runs, codecs, errors
