"""`bertetl bench`: one subcommand per benchmark: the engine against its peers (`systems`, also
what `bertetl bench` alone runs), its host path (`host`), memory against table size (`memory`),
executors against each other (`executors`), long documents (`long-text`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

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
#: `--memory-model`: `bertetl.bench.memory.MEMORY_MODELS`.
MemoryModel = Literal["layer", "minilm", "null"]

# Options several benchmarks share, declared once.
Rows = Annotated[int, typer.Option(help=help_of(BenchConfig, "rows"))]
Repeats = Annotated[int, typer.Option(help=help_of(BenchConfig, "repeats"))]
DeviceOption = Annotated[Device, typer.Option("--device", help=help_of(EngineConfig, "device"))]
DTypeOption = Annotated[DType, typer.Option("--dtype", help=help_of(EngineConfig, "dtype"))]
BatchTokens = Annotated[int | None, typer.Option(help=help_of(EngineConfig, "batch_tokens"))]
Inputs = Annotated[
    str,
    typer.Option(
        help="Comma-separated input sets: reviews (real), synthetic (length mix), "
        "or PATH.parquet[:COLUMN] (your own texts; PATH may also be a folder, or an "
        "s3://... file or prefix with --storage-option)."
    ),
]
LongTextOption = Annotated[
    LongText,
    typer.Option("--long-text", help="The engine systems' " + help_of(EngineConfig, "long_text")),
]
NerAggregationOption = Annotated[
    NerAggregation,
    typer.Option("--ner-aggregation", help=help_of(BenchConfig, "ner_aggregation")),
]
ZeroShotLabels = Annotated[str | None, typer.Option(help=help_of(BenchConfig, "zero_shot_labels"))]
Out = Annotated[Path, typer.Option(help="Write the results as JSON here.")]
OUT = Path("bench.json")
MODELS = ",".join(BENCH["models"])
INPUTS = ",".join(BENCH["inputs"])

bench = typer.Typer(
    help="Benchmark the engine: against its peers (systems; what `bertetl bench` alone runs), "
    "its host path, memory against table size, executors, long documents.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@bench.callback(invoke_without_command=True)
def _default(ctx: typer.Context) -> None:
    """With no subcommand: `bertetl bench systems` with its defaults."""
    if ctx.invoked_subcommand is None:
        systems()


@bench.command("systems")
def systems(
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated: minilm, bert-base (random weights), embedding model dirs, "
            "classify:DIR for a classifier, ner:DIR for a token classifier (against the "
            "token-classification pipeline), zero-shot:MODEL for a zero-shot head on an "
            "embedding model (against sentence-transformers similarity, and the embedding "
            "alone)."
        ),
    ] = MODELS,
    inputs: Inputs = INPUTS,
    systems: Annotated[
        str,
        typer.Option(
            help="Comma-separated: pipeline, sentence-transformers, engine-model, engine-e2e, "
            "engine-e2e-int8, engine-e2e-onnx, engine-e2e-onnx-int8 (CPU; each reports its "
            "agreement with fp32), sentence-transformers-onnx-int8 (its own export and int8 "
            "preset for this CPU, in the peer venv: make peers). The host path is `bertetl "
            "bench host`."
        ),
    ] = ",".join(BENCH["systems"]),
    peer_python: Annotated[str, typer.Option(help=help_of(BenchConfig, "peer_python"))] = BENCH[
        "peer_python"
    ],
    rows: Rows = BENCH["rows"],
    repeats: Repeats = BENCH["repeats"],
    device: DeviceOption = BENCH["device"],
    dtype: DTypeOption = BENCH["dtype"],
    batch_tokens: BatchTokens = None,
    ner_aggregation: NerAggregationOption = BENCH["ner_aggregation"],
    zero_shot_labels: ZeroShotLabels = None,
    long_text: LongTextOption = "truncate",
    out: Out = OUT,
    storage_option: StorageOption = None,
    debug: Debug = False,
) -> None:
    """Benchmark the engine against transformers' pipeline and sentence-transformers.

    Runs every system on the same texts in its own process and prints rows/s, tokens/s,
    padding waste, ratios to each baseline, peak RSS and, on GPU, peak GPU memory and MFU.
    """
    if "host" in split_list(systems):
        fail("--systems host: the host path is its own command, `bertetl bench host`", debug, 2)
    _check_out(out, split_list(inputs) + split_list(models), debug, ("environment", "results"))
    config = _bench_config(
        debug,
        storage_option,
        models=split_list(models),
        inputs=split_list(inputs),
        systems=split_list(systems),
        rows=rows,
        repeats=repeats,
        device=device,
        dtype=dtype,
        batch_tokens=batch_tokens,
        ner_aggregation=ner_aggregation,
        zero_shot_labels=zero_shot_labels,
        peer_python=peer_python,
        engine_options={"long_text": long_text} if long_text != "truncate" else {},
    )
    _run_systems(config, out, debug)


@bench.command("host")
def host(
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated: minilm, bert-base (random weights), embedding model dirs, "
            "classify:DIR for a classifier."
        ),
    ] = MODELS,
    inputs: Inputs = INPUTS,
    rows: Rows = BENCH["rows"],
    repeats: Repeats = BENCH["repeats"],
    device: DeviceOption = BENCH["device"],
    dtype: DTypeOption = BENCH["dtype"],
    batch_tokens: BatchTokens = None,
    cores: Annotated[
        str | None,
        typer.Option(
            help="Core counts, e.g. 1,2; each runs in a process pinned to that many CPUs. "
            "Default: 1 and all."
        ),
    ] = None,
    compression: Annotated[str, typer.Option(help=help_of(BenchConfig, "compression"))] = ",".join(
        BENCH["compression"]
    ),
    tokenizers: Annotated[str, typer.Option(help=help_of(BenchConfig, "tokenizers"))] = ",".join(
        str(n) for n in BENCH["tokenizers"]
    ),
    long_text: LongTextOption = "truncate",
    out: Out = OUT,
    storage_option: StorageOption = None,
    debug: Debug = False,
) -> None:
    """The engine end to end with a null model: what the host's cores can feed a GPU.

    Runs the real read, tokenize, batch and write path at each core count (each in a process
    pinned to that many CPUs) and prints seconds per stage, and the cores an H100 would need.
    """
    _check_out(out, split_list(inputs) + split_list(models), debug, ("environment", "results"))
    config = _bench_config(
        debug,
        storage_option,
        models=split_list(models),
        inputs=split_list(inputs),
        systems=["host"],
        rows=rows,
        repeats=repeats,
        device=device,
        dtype=dtype,
        batch_tokens=batch_tokens,
        cores=split_list(cores) if cores else None,
        compression=split_list(compression),
        tokenizers=split_list(tokenizers),
        engine_options={"long_text": long_text} if long_text != "truncate" else {},
    )
    _run_systems(config, out, debug)


def _bench_config(debug: bool, storage_option: list[str] | None, **values: Any) -> BenchConfig:
    """The systems bench's config from its options (one line and exit 2 when one is bad)."""
    from bertetl.io.stores.locations import parse_storage_options

    with user_errors(debug):
        storage_options = parse_storage_options(storage_option)
    return build_config(BenchConfig, debug, storage_options=storage_options, **values)


def _run_systems(config: BenchConfig, out: Path, debug: bool) -> None:
    """The engine against its peers on the same texts; exit 1 when a system failed."""
    from bertetl.bench.systems import format_table, run_bench

    with user_errors(debug):
        result = run_bench(config)
        out.write_text(json.dumps(result, indent=2))
    typer.echo(format_table(result))
    typer.echo(f"results written to {out}")
    if result["errors"]:
        raise typer.Exit(1)


@bench.command("memory")
def memory(
    rows: Annotated[
        str, typer.Option(help="Row counts of the tables, one run each, e.g. 100000,1000000.")
    ] = "100000,1000000",
    memory_layer: Annotated[
        MemoryLayer,
        typer.Option(
            help="The one-layer model of --memory-model layer: a 32-wide toy (what the "
            "engine holds) or one layer of MiniLM's width (its activations too)."
        ),
    ] = "toy",
    memory_model: Annotated[
        MemoryModel,
        typer.Option(
            help="layer = the one-layer model of --memory-layer; minilm = the real MiniLM, "
            "as a user runs it; null = the real MiniLM's tokenizer and output with the "
            "forward pass nulled (the host path at full speed)."
        ),
    ] = "layer",
    out: Out = OUT,
    debug: Debug = False,
) -> None:
    """Peak RSS of end-to-end runs against the table's size, each in a fresh process with
    default settings, and each size's ratio to the first. Under `taskset -c 0` the runs
    are slowed to one core."""
    from bertetl.bench.memory import memory_check

    _check_out(out, [], debug, ("memory",))
    sizes = _row_counts(rows, debug)
    with user_errors(debug):
        result = memory_check(sizes, layer=memory_layer, model=memory_model)
        out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))


def _check_out(out: Path, inputs: list[str], debug: bool, keys: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an `--out` that is a folder, one of the bench's inputs (a
    table or model path named in `--inputs` or `--models`), or an existing file that is not
    an earlier result of this bench (a JSON object with its `keys`: `check_output_file`)."""
    from bertetl.io.paths import check_output_file

    paths = [item.split(":", 1)[-1] if ":" in item else item for item in inputs]
    paths += [item.split(":", 1)[0] for item in inputs if ":" in item]
    with user_errors(debug):
        check_output_file(
            out, "--out", [p for p in paths if p and Path(p).exists()], keys=frozenset(keys)
        )


def _row_counts(value: str, debug: bool) -> list[int]:
    """`memory --rows`: positive integers (one line and exit 2 otherwise)."""
    try:
        sizes = [int(v) for v in split_list(value)]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"got {value!r}")
    except ValueError as e:
        fail(f"--rows: row counts are positive integers, e.g. 20000,100000 ({e})", debug, 2)
    return sizes


@bench.command("executors")
def executors(
    executors: Annotated[
        str, typer.Option(help="Comma-separated executors to compare, e.g. local,ray.")
    ] = "local,ray",
    models: Annotated[
        str,
        typer.Option(help="The model (as `bertetl bench systems --models` takes one)."),
    ] = MODELS,
    rows: Annotated[int, typer.Option(help="Rows of the table: the real reviews, cycled.")] = BENCH[
        "rows"
    ],
    partitions: Annotated[int, typer.Option(help="Date partitions of the table.")] = 4,
    files_per_partition: Annotated[int, typer.Option(help="Files in each partition.")] = 2,
    repeats: Repeats = BENCH["repeats"],
    device: DeviceOption = BENCH["device"],
    dtype: DTypeOption = BENCH["dtype"],
    batch_tokens: BatchTokens = None,
    ner_aggregation: NerAggregationOption = BENCH["ner_aggregation"],
    zero_shot_labels: ZeroShotLabels = None,
    out: Out = OUT,
    debug: Debug = False,
) -> None:
    """End-to-end enrich rate of each executor on the same partitioned table, in turns.

    Each run is in its own process; reports each run and the paired ratio per repeat.
    """
    import tempfile

    from bertetl.bench.executors import executor_bench
    from bertetl.bench.systems import engine_fields, split_task

    _check_out(out, split_list(models), debug, ("runs", "partitions"))
    bench_config = BenchConfig(
        models=split_list(models)[:1],
        rows=rows,
        repeats=repeats,
        ner_aggregation=ner_aggregation,
        zero_shot_labels=zero_shot_labels,
    )
    task, name = split_task(bench_config.models[0])
    config = build_config(
        EngineConfig,
        debug,
        text_column="text",
        **engine_fields(task, name, bench_config),
        device=device,
        dtype=dtype,
        batch_tokens=batch_tokens,
    )
    with user_errors(debug), tempfile.TemporaryDirectory(prefix="bertetl-executors-") as work:
        result = executor_bench(
            config,
            split_list(executors),
            rows,
            partitions,
            files_per_partition,
            repeats,
            Path(work),
        )
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))


@bench.command("long-text")
def long_text(
    documents: Annotated[
        int, typer.Option(help="Long documents (1-8k tokens of joined reviews) to run on.")
    ] = 16,
    models: Annotated[
        str, typer.Option(help="The embedding model (the first, if several are given).")
    ] = MODELS,
    device: DeviceOption = BENCH["device"],
    repeats: Annotated[
        int, typer.Option(help="Alternating rounds of the three systems; medians reported.")
    ] = BENCH["repeats"],
    out: Out = OUT,
    debug: Debug = False,
) -> None:
    """`--long-text window` against truncate and against hand-cut chunks through
    sentence-transformers, end to end, with the same token windows."""
    import tempfile

    from bertetl.bench.long_text import run_long_text_bench

    _check_out(out, split_list(models), debug, ("documents", "repeats"))
    with user_errors(debug), tempfile.TemporaryDirectory(prefix="bertetl-long-") as work:
        result = run_long_text_bench(Path(work), documents, split_list(models)[0], device, repeats)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))


@bench.command("keyed")
def keyed(
    rows: Annotated[int, typer.Option(help="Rows of the table (real reviews).")] = 20_000,
    share: Annotated[float, typer.Option(help="Share of the rows edited before the rerun.")] = 0.01,
    dry_run_rows: Annotated[
        int, typer.Option(help="Rows of the table the dry run alone is timed on.")
    ] = 1_000_000,
    side: Annotated[
        bool, typer.Option(help="Also a full run with --output-columns key, for its bytes.")
    ] = True,
    models: Annotated[str, typer.Option(help="The embedding model.")] = MODELS,
    device: DeviceOption = BENCH["device"],
    out: Out = OUT,
    debug: Debug = False,
) -> None:
    """A keyed run (`--key`) over a table that changes in place: full run, then `--share` of
    the rows edited and the rerun (the ratio of the two), a dry run, and the bytes of
    `--output-columns key` against `all`; then a dry run alone on `--dry-run-rows` rows."""
    import tempfile

    from bertetl.bench.keyed import run_dry_run_bench, run_keyed_bench

    _check_out(out, split_list(models), debug, ("rows", "incremental_over_full"))
    model = split_list(models)[0]
    with user_errors(debug), tempfile.TemporaryDirectory(prefix="bertetl-keyed-") as work:
        result = run_keyed_bench(Path(work), rows, model, device, share, side)
        if dry_run_rows:
            result["dry_run_alone"] = run_dry_run_bench(Path(work), dry_run_rows, model)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))
