"""The `bertetl` command: parse options into the config models, call the engine, print."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from pydantic import ValidationError

from bertetl.bench import BenchConfig
from bertetl.config import Device, DType, EngineConfig, Executor, Quantize, TrainConfig
from bertetl.errors import BertEtlError, FilesFailedError, PartitionsFailedError

app = typer.Typer(
    help="Stream Parquet text tables through BERT encoders: embeddings and classifications.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _help(model: type, name: str) -> str:
    return model.model_fields[name].description or ""


#: Defaults live on the config models; the CLI reads them from there.
ENGINE = {name: info.default for name, info in EngineConfig.model_fields.items()}
TRAIN = {name: info.default for name, info in TrainConfig.model_fields.items()}
BENCH = {name: info.default for name, info in BenchConfig.model_fields.items()}


#: Errors from libraries that reach the CLI as one line rather than a traceback.
SYSTEM_ERRORS = (OSError, pa.ArrowException)


def _fail(message: str, debug: bool, code: int = 1) -> None:
    if debug:
        raise
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors(debug: bool) -> Iterator[None]:
    """Turn bertetl's errors and I/O or Arrow errors into one line on stderr and exit 1."""
    try:
        yield
    except BertEtlError as e:
        _fail(str(e), debug)
    except SYSTEM_ERRORS as e:
        _fail(f"{type(e).__name__}: {e}", debug)


#: Config fields whose CLI option is not simply `--field-name`.
OPTION_NAMES = {"include_scores": "--scores", "multi_label_threshold": "--threshold"}


def _config(model: type, debug: bool, **values: Any) -> Any:
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["loc"]:
            name = str(first["loc"][0])
            message = f"{OPTION_NAMES.get(name, '--' + name.replace('_', '-'))}: {message}"
        _fail(message, debug, code=2)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's API calls, one per log


# Engine options, shared by every command that enriches (enrich, backfill, incremental).
TextColumn = Annotated[str, typer.Option(help=_help(EngineConfig, "text_column"))]
EmbedModel = Annotated[str | None, typer.Option(help=_help(EngineConfig, "embed_model"))]
ClassifyModel = Annotated[str | None, typer.Option(help=_help(EngineConfig, "classify_model"))]
DeviceOpt = Annotated[Device, typer.Option(help=_help(EngineConfig, "device"))]
DTypeOpt = Annotated[DType, typer.Option(help=_help(EngineConfig, "dtype"))]
QuantizeOpt = Annotated[Quantize, typer.Option(help=_help(EngineConfig, "quantize"))]
BatchTokens = Annotated[int | None, typer.Option(help=_help(EngineConfig, "batch_tokens"))]
MaxBatchRows = Annotated[int, typer.Option(help=_help(EngineConfig, "max_batch_rows"))]
MaxLength = Annotated[int | None, typer.Option(help=_help(EngineConfig, "max_length"))]
Workers = Annotated[int | None, typer.Option(help=_help(EngineConfig, "workers"))]
Prefix = Annotated[str, typer.Option(help=_help(EngineConfig, "prefix"))]
WindowRows = Annotated[int, typer.Option(help=_help(EngineConfig, "window_rows"))]
Scores = Annotated[bool, typer.Option("--scores", help=_help(EngineConfig, "include_scores"))]
Threshold = Annotated[float, typer.Option(help=_help(EngineConfig, "multi_label_threshold"))]
AllowPickle = Annotated[bool, typer.Option(help=_help(EngineConfig, "allow_pickle"))]
ExecutorOpt = Annotated[Executor, typer.Option(help=_help(EngineConfig, "executor"))]
RayAddress = Annotated[str | None, typer.Option(help=_help(EngineConfig, "ray_address"))]
RayActors = Annotated[int | None, typer.Option(help=_help(EngineConfig, "ray_actors"))]
RayTokenizers = Annotated[int | None, typer.Option(help=_help(EngineConfig, "ray_tokenizers"))]
RayGroupRows = Annotated[int, typer.Option(help=_help(EngineConfig, "ray_group_rows"))]
Debug = Annotated[bool, typer.Option(help="Show tracebacks on errors.")]


def _engine_config(debug: bool, options: dict[str, Any]) -> EngineConfig:
    """The EngineConfig from a command's engine options (its locals)."""
    renamed = {"scores": "include_scores", "threshold": "multi_label_threshold"}
    values = {renamed.get(k, k): v for k, v in options.items()}
    return _config(
        EngineConfig, debug, **{k: v for k, v in values.items() if k in EngineConfig.model_fields}
    )


@app.command()
def enrich(
    source: Annotated[
        str, typer.Argument(help="Parquet file, directory (hive folders kept), or glob.")
    ],
    dest: Annotated[
        str, typer.Argument(help="Output directory (or .parquet file for one input file).")
    ],
    text_column: TextColumn,
    embed_model: EmbedModel = None,
    classify_model: ClassifyModel = None,
    device: DeviceOpt = ENGINE["device"],
    dtype: DTypeOpt = ENGINE["dtype"],
    quantize: QuantizeOpt = ENGINE["quantize"],
    batch_tokens: BatchTokens = None,
    max_batch_rows: MaxBatchRows = ENGINE["max_batch_rows"],
    max_length: MaxLength = None,
    workers: Workers = None,
    prefix: Prefix = ENGINE["prefix"],
    window_rows: WindowRows = ENGINE["window_rows"],
    scores: Scores = ENGINE["include_scores"],
    threshold: Threshold = ENGINE["multi_label_threshold"],
    allow_pickle: AllowPickle = ENGINE["allow_pickle"],
    executor: ExecutorOpt = ENGINE["executor"],
    ray_address: RayAddress = None,
    ray_actors: RayActors = None,
    ray_tokenizers: RayTokenizers = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write the run's report (counters, files) as JSON.")
    ] = None,
    debug: Debug = False,
) -> None:
    """Add embedding and/or classification columns to every row of SOURCE, written to DEST.

    Output keeps every input column (values, types, row order) and appends `embedding`,
    `label`, `score` (`scores`, `labels` when asked / multi-label) and `enrich_error`, which
    says why a row was not encoded (null, empty or whitespace-only text). Texts longer than
    the model's limit are truncated. Each output file is committed atomically.
    """
    _setup_logging(debug)
    config = _engine_config(debug, locals())
    from bertetl.pipeline import enrich as run

    with _user_errors(debug):
        try:
            result = run(source, dest, config)
        except FilesFailedError as e:
            if e.report is not None:
                _print_report(e.report, dest, report)
            raise
        _print_report(result, dest, report)


PartitionColumn = Annotated[str, typer.Option(help="Hive partition key, e.g. date.")]
Reuse = Annotated[
    bool, typer.Option(help="Rows with unchanged text take their earlier outputs (same model).")
]
Force = Annotated[
    bool,
    typer.Option(help="Re-enrich partitions even when unchanged, every row through the model."),
]
Retries = Annotated[int, typer.Option(help="Retries of a partition on transient I/O errors.")]


def _run_partitioned(kind: str, options: dict[str, Any]) -> None:
    """Run the backfill or incremental flow in Prefect's local mode and print its summary."""
    debug = options["debug"]
    config = _engine_config(debug, options)
    from flows.params import BackfillParams, IncrementalParams, RunOptions

    run = RunOptions(retries=options["retries"], progress_bar=sys.stderr.isatty())
    common = {
        "source": options["source"],
        "dest": options["dest"],
        "partition_column": options["partition_column"],
        "engine": config,
        "reuse": options["reuse"],
        "force": options["force"],
        "run": run,
    }
    with _user_errors(debug):
        from bertetl.commit import DestinationLock
        from bertetl.pipeline import make_pipeline
        from flows.local import local_api

        make_pipeline(config)  # a missing executor (no Ray) fails before any server starts
        lock = DestinationLock(options["dest"])
        lock.acquire()  # fail at once, before any server starts, if another run holds DEST
        lock.release()
        if kind == "backfill":
            from flows.partitioned import backfill_flow as flow_fn

            params: Any = BackfillParams(**common, start=options["start"], end=options["end"])
        else:
            from flows.partitioned import incremental_flow as flow_fn

            params = IncrementalParams(**common)
        try:
            with local_api():
                rows = flow_fn(params)
        except PartitionsFailedError as e:
            _print_summary(kind, e.rows, options["dest"])
            raise
        _print_summary(kind, rows, options["dest"])


def _print_summary(kind: str, rows: list[dict[str, Any]], dest: str) -> None:
    committed = [r for r in rows if r["status"] == "committed"]
    failed = sum(r["status"] == "failed" for r in rows)
    typer.echo(
        f"{kind}: {len(committed)} partition(s) committed, "
        f"{sum(r['status'] == 'skipped' for r in rows)} unchanged, {failed} failed; "
        f"{sum(r['rows'] for r in committed)} rows written "
        f"({sum(r['inferred'] for r in committed)} inferred, "
        f"{sum(r['reused'] for r in committed)} reused, "
        f"{sum(r['failed'] for r in committed)} with enrich_error) into {dest}"
    )


@app.command()
def backfill(
    source: Annotated[str, typer.Argument(help="Partitioned source folder (SOURCE/COL=VALUE/).")],
    dest: Annotated[str, typer.Argument(help="Output folder; partitions mirror the source.")],
    partition_column: PartitionColumn,
    text_column: TextColumn,
    start: Annotated[
        str | None, typer.Option(help="First partition value (inclusive; compared as strings).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Last partition value (inclusive; compared as strings).")
    ] = None,
    embed_model: EmbedModel = None,
    classify_model: ClassifyModel = None,
    device: DeviceOpt = ENGINE["device"],
    dtype: DTypeOpt = ENGINE["dtype"],
    quantize: QuantizeOpt = ENGINE["quantize"],
    batch_tokens: BatchTokens = None,
    max_batch_rows: MaxBatchRows = ENGINE["max_batch_rows"],
    max_length: MaxLength = None,
    prefix: Prefix = ENGINE["prefix"],
    window_rows: WindowRows = ENGINE["window_rows"],
    scores: Scores = ENGINE["include_scores"],
    threshold: Threshold = ENGINE["multi_label_threshold"],
    allow_pickle: AllowPickle = ENGINE["allow_pickle"],
    executor: ExecutorOpt = ENGINE["executor"],
    ray_address: RayAddress = None,
    ray_actors: RayActors = None,
    ray_tokenizers: RayTokenizers = None,
    ray_group_rows: RayGroupRows = ENGINE["ray_group_rows"],
    reuse: Reuse = True,
    force: Force = False,
    retries: Retries = 3,
    debug: Debug = False,
) -> None:
    """Enrich the partitions of SOURCE between --start and --end into DEST (Prefect flow).

    Each partition is committed atomically with a `_manifest.json`; a partition whose
    manifest matches its current input, model and config is skipped, so a rerun after a
    failure or a kill finishes what is missing and duplicates nothing.
    """
    _setup_logging(debug)
    _run_partitioned("backfill", locals())


@app.command()
def incremental(
    source: Annotated[str, typer.Argument(help="Partitioned source folder (SOURCE/COL=VALUE/).")],
    dest: Annotated[str, typer.Argument(help="Output folder; partitions mirror the source.")],
    partition_column: PartitionColumn,
    text_column: TextColumn,
    embed_model: EmbedModel = None,
    classify_model: ClassifyModel = None,
    device: DeviceOpt = ENGINE["device"],
    dtype: DTypeOpt = ENGINE["dtype"],
    quantize: QuantizeOpt = ENGINE["quantize"],
    batch_tokens: BatchTokens = None,
    max_batch_rows: MaxBatchRows = ENGINE["max_batch_rows"],
    max_length: MaxLength = None,
    prefix: Prefix = ENGINE["prefix"],
    window_rows: WindowRows = ENGINE["window_rows"],
    scores: Scores = ENGINE["include_scores"],
    threshold: Threshold = ENGINE["multi_label_threshold"],
    allow_pickle: AllowPickle = ENGINE["allow_pickle"],
    executor: ExecutorOpt = ENGINE["executor"],
    ray_address: RayAddress = None,
    ray_actors: RayActors = None,
    ray_tokenizers: RayTokenizers = None,
    ray_group_rows: RayGroupRows = ENGINE["ray_group_rows"],
    reuse: Reuse = True,
    force: Force = False,
    retries: Retries = 3,
    debug: Debug = False,
) -> None:
    """Enrich every new or changed partition of SOURCE into DEST (the nightly run).

    Inside a changed partition, rows whose text is unchanged (same model and config) reuse
    their earlier outputs, so editing 3 rows costs 3 inferences; each partition's manifest
    records rows_inferred and rows_reused.
    """
    _setup_logging(debug)
    _run_partitioned("incremental", locals())


def _print_report(result: Any, dest: str, report_path: Path | None) -> None:
    done = [f for f in result.files if f.error is None]
    typer.echo(
        f"enriched {result.rows} rows from {len(done)} file(s) in {result.seconds:.1f}s "
        f"({result.rows_per_second:.0f} rows/s) into {dest}; "
        f"{result.rows_failed} row(s) with enrich_error, {result.truncated_rows} truncated"
    )
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(result.to_dict(), indent=2))


@app.command()
def summary(
    dest: Annotated[str, typer.Argument(help="An enriched output folder (or file).")],
    partition_column: Annotated[
        str | None, typer.Option(help="Hive partition key to group by, e.g. date.")
    ] = None,
    prefix: Prefix = ENGINE["prefix"],
    debug: Debug = False,
) -> None:
    """Print label counts and row accounting per partition of an enriched table (sql/)."""
    from bertetl.summary import summarize

    with _user_errors(debug):
        tables = summarize(dest, partition_column, prefix)
    for name, table in tables.items():
        typer.echo(f"{name}:")
        with pl_config():
            typer.echo(str(table))


def pl_config() -> Any:
    """Print whole tables."""
    import polars as pl

    return pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True)


@app.command()
def train(
    table: Annotated[str, typer.Argument(help="Labelled Parquet file, directory or glob.")],
    model_out: Annotated[str, typer.Argument(help="Directory to write the fine-tuned model to.")],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")],
    label_column: Annotated[str, typer.Option(help="Column holding the label (any type).")],
    base_model: Annotated[str, typer.Option(help=_help(TrainConfig, "base_model"))] = TRAIN[
        "base_model"
    ],
    epochs: Annotated[float, typer.Option(help=_help(TrainConfig, "epochs"))] = TRAIN["epochs"],
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = TRAIN["batch_size"],
    learning_rate: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = TRAIN[
        "learning_rate"
    ],
    max_length: Annotated[int, typer.Option(help=_help(TrainConfig, "max_length"))] = TRAIN[
        "max_length"
    ],
    eval_fraction: Annotated[float, typer.Option(help=_help(TrainConfig, "eval_fraction"))] = TRAIN[
        "eval_fraction"
    ],
    max_rows: Annotated[int | None, typer.Option(help=_help(TrainConfig, "max_rows"))] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, sampling and init.")] = 0,
    device: Annotated[Device, typer.Option(help="auto = cuda when present, else cpu.")] = "auto",
    debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False,
) -> None:
    """Fine-tune a sequence classifier on TABLE and save it to MODEL_OUT.

    Holds out a stratified split, reports accuracy and macro-F1 on it, and saves a standard
    Hugging Face model dir (safetensors, tokenizer, id2label) that `enrich --classify-model`
    loads. MODEL_OUT must be new, empty, or an earlier `bertetl train` output, which is
    replaced (atomically, once the new model is saved); any other folder is refused.
    """
    _setup_logging(debug)
    config = _config(
        TrainConfig,
        debug,
        text_column=text_column,
        label_column=label_column,
        base_model=base_model,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_length=max_length,
        eval_fraction=eval_fraction,
        max_rows=max_rows,
        seed=seed,
        device=device,
    )
    from bertetl.train import train as run

    with _user_errors(debug):
        result = run(table, model_out, config)
    typer.echo(
        f"trained on {result.train_rows} rows in {result.seconds:.0f}s; held-out "
        f"({result.eval_rows} rows): accuracy {result.accuracy:.3f}, macro-F1 "
        f"{result.macro_f1:.3f}; saved to {model_out}"
    )


@app.command()
def bench(
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated: minilm, bert-base (random weights), embedding model dirs, "
            "or classify:DIR for a classifier."
        ),
    ] = ",".join(BENCH["models"]),
    inputs: Annotated[
        str,
        typer.Option(
            help="Comma-separated input sets: reviews (real), synthetic (length mix), "
            "or PATH.parquet[:COLUMN] (your own texts)."
        ),
    ] = ",".join(BENCH["inputs"]),
    systems: Annotated[
        str,
        typer.Option(
            help="Comma-separated: pipeline, sentence-transformers, engine-model, engine-e2e, "
            "engine-e2e-int8 (CPU; reports its agreement with fp32)."
        ),
    ] = ",".join(BENCH["systems"]),
    rows: Annotated[int, typer.Option(help=_help(BenchConfig, "rows"))] = BENCH["rows"],
    repeats: Annotated[int, typer.Option(help=_help(BenchConfig, "repeats"))] = BENCH["repeats"],
    device: Annotated[Device, typer.Option(help=_help(EngineConfig, "device"))] = BENCH["device"],
    dtype: Annotated[DType, typer.Option(help=_help(EngineConfig, "dtype"))] = BENCH["dtype"],
    batch_tokens: Annotated[
        int | None, typer.Option(help=_help(EngineConfig, "batch_tokens"))
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(
            help="Instead: peak RSS of end-to-end runs at these row counts, e.g. 100000,1000000."
        ),
    ] = None,
    executors: Annotated[
        str | None,
        typer.Option(
            help="Instead: end-to-end enrich rate of these executors (e.g. local,ray) on the "
            "real reviews cycled to --rows rows in --partitions x --files-per-partition files; "
            "reports each run and the paired ratio."
        ),
    ] = None,
    partitions: Annotated[int, typer.Option(help="With --executors: date partitions.")] = 4,
    files_per_partition: Annotated[int, typer.Option(help="With --executors: files each.")] = 2,
    out: Annotated[Path, typer.Option(help="Write the results as JSON here.")] = Path("bench.json"),
    debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False,
) -> None:
    """Benchmark the engine against transformers' pipeline and sentence-transformers.

    Runs every system on the same texts in its own process and prints rows/s, tokens/s,
    padding waste, ratios to each baseline, peak RSS and, on GPU, peak GPU memory and MFU.
    """
    from bertetl.bench import format_table, memory_check, run_bench

    def split(value: str) -> list[str]:
        return [v.strip() for v in value.split(",") if v.strip()]

    if executors:
        _bench_executors(split(executors), split(models)[0], rows, repeats, options=locals())
        return

    if memory:
        with _user_errors(debug):
            result = memory_check([int(v) for v in split(memory)])
            out.write_text(json.dumps(result, indent=2))
        typer.echo(json.dumps(result, indent=2))
        return
    config = _config(
        BenchConfig,
        debug,
        models=split(models),
        inputs=split(inputs),
        systems=split(systems),
        rows=rows,
        repeats=repeats,
        device=device,
        dtype=dtype,
        batch_tokens=batch_tokens,
    )
    with _user_errors(debug):
        result = run_bench(config)
        out.write_text(json.dumps(result, indent=2))
    typer.echo(format_table(result))
    typer.echo(f"results written to {out}")
    if result["errors"]:
        raise typer.Exit(1)


def _bench_executors(
    executors: list[str], model: str, rows: int, repeats: int, options: dict[str, Any]
) -> None:
    """`bertetl bench --executors`: the same enrich job on each executor, in turns."""
    import tempfile

    from bertetl.bench import split_task
    from bertetl.bench_executors import executor_bench

    debug = options["debug"]
    task, name = split_task(model)
    config = _config(
        EngineConfig,
        debug,
        text_column="text",
        **{f"{task}_model": name},
        device=options["device"],
        dtype=options["dtype"],
        batch_tokens=options["batch_tokens"],
    )
    with _user_errors(debug), tempfile.TemporaryDirectory(prefix="bertetl-executors-") as work:
        result = executor_bench(
            config,
            executors,
            rows,
            options["partitions"],
            options["files_per_partition"],
            repeats,
            Path(work),
        )
    options["out"].write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))
