"""`bertetl bench`: the engine against its peers, executors against each other, memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from bertetl.bench.systems import BenchConfig
from bertetl.cli.common import (
    Debug,
    StorageOption,
    build_config,
    fail,
    help_of,
    split_list,
    user_errors,
)
from bertetl.config import Device, DType, EngineConfig, LongText, NerAggregation

BENCH = {name: info.default for name, info in BenchConfig.model_fields.items()}
#: `--memory-layer`: the keys of `bertetl.bench.memory.MEMORY_LAYERS` (imported lazily there).
MemoryLayer = Literal["toy", "minilm"]


def bench(
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated: minilm, bert-base (random weights), embedding model dirs, "
            "classify:DIR for a classifier, ner:DIR for a token classifier (against the "
            "token-classification pipeline), zero-shot:MODEL for a zero-shot head on an "
            "embedding model (against sentence-transformers similarity, and the embedding "
            "alone)."
        ),
    ] = ",".join(BENCH["models"]),
    inputs: Annotated[
        str,
        typer.Option(
            help="Comma-separated input sets: reviews (real), synthetic (length mix), "
            "or PATH.parquet[:COLUMN] (your own texts; PATH may also be a folder, or an "
            "s3://... file or prefix with --storage-option)."
        ),
    ] = ",".join(BENCH["inputs"]),
    systems: Annotated[
        str,
        typer.Option(
            help="Comma-separated: pipeline, sentence-transformers, engine-model, engine-e2e, "
            "engine-e2e-int8, engine-e2e-onnx, engine-e2e-onnx-int8 (CPU; each reports its "
            "agreement with fp32), host (the engine end to end with a null model: what the "
            "host's cores can feed a GPU; see --cores), sentence-transformers-onnx-int8 "
            "(its own export and int8 preset for this CPU, in the peer venv: make peers)."
        ),
    ] = ",".join(BENCH["systems"]),
    peer_python: Annotated[str, typer.Option(help=help_of(BenchConfig, "peer_python"))] = BENCH[
        "peer_python"
    ],
    rows: Annotated[int, typer.Option(help=help_of(BenchConfig, "rows"))] = BENCH["rows"],
    repeats: Annotated[int, typer.Option(help=help_of(BenchConfig, "repeats"))] = BENCH["repeats"],
    device: Annotated[Device, typer.Option(help=help_of(EngineConfig, "device"))] = BENCH["device"],
    dtype: Annotated[DType, typer.Option(help=help_of(EngineConfig, "dtype"))] = BENCH["dtype"],
    batch_tokens: Annotated[
        int | None, typer.Option(help=help_of(EngineConfig, "batch_tokens"))
    ] = None,
    cores: Annotated[
        str | None,
        typer.Option(
            help="With --systems host: core counts, e.g. 1,2; each runs in a process pinned to "
            "that many CPUs. Default: 1 and all."
        ),
    ] = None,
    compression: Annotated[
        str,
        typer.Option(help="With --systems host: " + help_of(BenchConfig, "compression")),
    ] = ",".join(BENCH["compression"]),
    tokenizers: Annotated[str, typer.Option(help=help_of(BenchConfig, "tokenizers"))] = ",".join(
        str(n) for n in BENCH["tokenizers"]
    ),
    ner_aggregation: Annotated[
        NerAggregation, typer.Option(help=help_of(BenchConfig, "ner_aggregation"))
    ] = BENCH["ner_aggregation"],
    zero_shot_labels: Annotated[
        str | None, typer.Option(help=help_of(BenchConfig, "zero_shot_labels"))
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(
            help="Instead: peak RSS of end-to-end runs at these row counts, e.g. 100000,1000000."
        ),
    ] = None,
    memory_layer: Annotated[
        MemoryLayer,
        typer.Option(
            help="--memory's one-layer model: a 32-wide toy (what the engine holds) or one "
            "layer of MiniLM's width (its activations too)."
        ),
    ] = "toy",
    executors: Annotated[
        str | None,
        typer.Option(
            help="Instead: end-to-end enrich rate of these executors (e.g. local,ray) on the "
            "real reviews cycled to --rows rows in --partitions x --files-per-partition files; "
            "reports each run and the paired ratio."
        ),
    ] = None,
    long_text: Annotated[
        LongText, typer.Option(help="The engine systems' " + help_of(EngineConfig, "long_text"))
    ] = "truncate",
    long_documents: Annotated[
        int | None,
        typer.Option(
            help="Instead: on this many long documents (1-8k tokens of joined reviews), "
            "--long-text window against truncate and against hand-cut chunks through "
            "sentence-transformers, end to end, with the same token windows, in --repeats "
            "alternating rounds on --device (medians)."
        ),
    ] = None,
    partitions: Annotated[int, typer.Option(help="With --executors: date partitions.")] = 4,
    files_per_partition: Annotated[int, typer.Option(help="With --executors: files each.")] = 2,
    out: Annotated[Path, typer.Option(help="Write the results as JSON here.")] = Path("bench.json"),
    storage_option: StorageOption = None,
    debug: Debug = False,
) -> None:
    """Benchmark the engine against transformers' pipeline and sentence-transformers.

    Runs every system on the same texts in its own process and prints rows/s, tokens/s,
    padding waste, ratios to each baseline, peak RSS and, on GPU, peak GPU memory and MFU.
    """
    if long_documents is not None:
        _bench_long_text(long_documents, split_list(models)[0], device, repeats, out, debug)
        return
    if executors:
        _bench_executors(
            BenchConfig(
                models=split_list(models)[:1],
                rows=rows,
                repeats=repeats,
                device=device,
                dtype=dtype,
                batch_tokens=batch_tokens,
                ner_aggregation=ner_aggregation,
                zero_shot_labels=zero_shot_labels,
            ),
            split_list(executors),
            partitions,
            files_per_partition,
            out,
            debug,
        )
    elif memory:
        _bench_memory(_row_counts(memory, debug), memory_layer, out, debug)
    else:
        from bertetl.io.storage import parse_storage_options

        with user_errors(debug):
            storage_options = parse_storage_options(storage_option)
        config = build_config(
            BenchConfig,
            debug,
            models=split_list(models),
            inputs=split_list(inputs),
            systems=split_list(systems),
            rows=rows,
            repeats=repeats,
            device=device,
            dtype=dtype,
            batch_tokens=batch_tokens,
            cores=split_list(cores) if cores else None,
            compression=split_list(compression),
            tokenizers=split_list(tokenizers),
            ner_aggregation=ner_aggregation,
            zero_shot_labels=zero_shot_labels,
            peer_python=peer_python,
            engine_options={"long_text": long_text} if long_text != "truncate" else {},
            storage_options=storage_options,
        )
        _bench_systems(config, out, debug)


def _bench_systems(config: BenchConfig, out: Path, debug: bool) -> None:
    """The engine against its peers on the same texts; exit 1 when a system failed."""
    from bertetl.bench.systems import format_table, run_bench

    with user_errors(debug):
        result = run_bench(config)
        out.write_text(json.dumps(result, indent=2))
    typer.echo(format_table(result))
    typer.echo(f"results written to {out}")
    if result["errors"]:
        raise typer.Exit(1)


def _bench_long_text(
    documents: int, model: str, device: str, repeats: int, out: Path, debug: bool
) -> None:
    """`bertetl bench --long-documents N`: window vs truncate vs hand-cut chunks, in
    `repeats` alternating rounds."""
    import tempfile

    from bertetl.bench.long_text import run_long_text_bench

    with user_errors(debug), tempfile.TemporaryDirectory(prefix="bertetl-long-") as work:
        result = run_long_text_bench(Path(work), documents, model, device, repeats)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))


def _row_counts(value: str, debug: bool) -> list[int]:
    """`--memory`'s row counts: positive integers (one line and exit 2 otherwise)."""
    try:
        sizes = [int(v) for v in split_list(value)]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"got {value!r}")
    except ValueError as e:
        fail(f"--memory: row counts are positive integers, e.g. 20000,100000 ({e})", debug, 2)
    return sizes


def _bench_memory(sizes: list[int], layer: str, out: Path, debug: bool) -> None:
    """Peak RSS of end-to-end runs at these row counts."""
    from bertetl.bench.memory import memory_check

    with user_errors(debug):
        result = memory_check(sizes, layer=layer)
        out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))


def _bench_executors(
    bench: BenchConfig,
    executors: list[str],
    partitions: int,
    files_per_partition: int,
    out: Path,
    debug: bool,
) -> None:
    """`bertetl bench --executors`: the same enrich job on each executor, in turns."""
    import tempfile

    from bertetl.bench.executors import executor_bench
    from bertetl.bench.systems import engine_fields, split_task

    task, name = split_task(bench.models[0])
    config = build_config(
        EngineConfig,
        debug,
        text_column="text",
        **engine_fields(task, name, bench),
        device=bench.device,
        dtype=bench.dtype,
        batch_tokens=bench.batch_tokens,
    )
    with user_errors(debug), tempfile.TemporaryDirectory(prefix="bertetl-executors-") as work:
        result = executor_bench(
            config,
            executors,
            bench.rows,
            partitions,
            files_per_partition,
            bench.repeats,
            Path(work),
        )
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))
