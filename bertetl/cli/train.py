"""`bertetl train`: fine-tune a sequence classifier (or, with `--task token-classification`, a
token classifier for named entities) on a labelled table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from bertetl.cli.common import (
    Debug,
    StorageOption,
    build_config,
    help_of,
    setup_logging,
    user_errors,
)
from bertetl.config import Device, TrainConfig

TRAIN = {name: info.default for name, info in TrainConfig.model_fields.items()}
Task = Literal["sequence-classification", "token-classification"]


def train(
    table: Annotated[
        str, typer.Argument(help="Labelled Parquet file, directory or glob; or s3://... URI.")
    ],
    model_out: Annotated[
        str,
        typer.Argument(help="Local directory to write the fine-tuned model to (not a URI)."),
    ],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")],
    label_column: Annotated[
        str | None,
        typer.Option(help="Column holding the label (any type); sequence-classification."),
    ] = None,
    task: Annotated[
        Task,
        typer.Option(
            help="sequence-classification (a label per row) or token-classification (named "
            "entities from --spans-column)."
        ),
    ] = "sequence-classification",
    spans_column: Annotated[
        str,
        typer.Option(
            help="token-classification: column of list<struct<start, end, label>> character spans."
        ),
    ] = "spans",
    eval_table: Annotated[
        str | None,
        typer.Option(
            help="token-classification: evaluate on this table (path or s3://...) instead of "
            "a held-out split."
        ),
    ] = None,
    base_model: Annotated[str, typer.Option(help=help_of(TrainConfig, "base_model"))] = TRAIN[
        "base_model"
    ],
    epochs: Annotated[float, typer.Option(help=help_of(TrainConfig, "epochs"))] = TRAIN["epochs"],
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = TRAIN["batch_size"],
    learning_rate: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = TRAIN[
        "learning_rate"
    ],
    max_length: Annotated[int, typer.Option(help=help_of(TrainConfig, "max_length"))] = TRAIN[
        "max_length"
    ],
    eval_fraction: Annotated[
        float, typer.Option(help=help_of(TrainConfig, "eval_fraction"))
    ] = TRAIN["eval_fraction"],
    max_rows: Annotated[int | None, typer.Option(help=help_of(TrainConfig, "max_rows"))] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, sampling and init.")] = 0,
    device: Annotated[Device, typer.Option(help="auto = cuda when present, else cpu.")] = "auto",
    storage_option: StorageOption = None,
    debug: Debug = False,
) -> None:
    """Fine-tune a sequence classifier (or token classifier) on TABLE and save it to MODEL_OUT.

    Holds out a stratified split, reports accuracy and macro-F1 on it (its whole `bertetl
    evaluate` report, metrics.json, plots and report.html, goes to MODEL_OUT/eval/), and saves
    a standard Hugging Face model dir (safetensors, tokenizer, id2label) that
    `enrich --classify-model` loads. MODEL_OUT must be new, empty, or an earlier `bertetl
    train` output, which is replaced (atomically, once the new model is saved); any other
    folder is refused.

    With `--task token-classification` TABLE needs a spans column instead of labels; the
    held-out report is seqeval's entity-level precision, recall and F1 (MODEL_OUT/eval/
    metrics.json), and the model is what `enrich --ner` loads.

    TABLE (and --eval-table) may be on an object store (s3://BUCKET/PREFIX, with
    --storage-option; docs/STORAGE.md); MODEL_OUT is a local folder.
    """
    setup_logging(debug)
    if task == "token-classification":
        _train_tokens(
            table,
            model_out,
            debug,
            storage_option,
            text_column=text_column,
            spans_column=spans_column,
            eval_table=eval_table,
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
        return
    if eval_table is not None:  # --label-column missing is the config's own error
        typer.echo("error: --eval-table is for --task token-classification only", err=True)
        raise typer.Exit(2)
    config = build_config(
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
    from bertetl.io.stores.locations import parse_storage_options
    from bertetl.observe import observe_run
    from bertetl.training.train import train as run

    with user_errors(debug):
        options = parse_storage_options(storage_option)
        with observe_run("train", table, model_out, None, None, None, options, enriches=False):
            result = run(table, model_out, config, options)
    typer.echo(
        f"trained on {result.train_rows} rows in {result.seconds:.0f}s; held-out "
        f"({result.eval_rows} rows): accuracy {result.accuracy:.3f}, macro-F1 "
        f"{result.macro_f1:.3f}; saved to {model_out}"
    )
    typer.echo(f"held-out report: {Path(model_out) / result.eval_dir / 'report.html'}")


def _train_tokens(
    table: str, model_out: str, debug: bool, storage_option: list[str] | None, **values: object
) -> None:
    """`--task token-classification`: fine-tune a token classifier and print its entity F1."""
    from bertetl.io.stores.locations import parse_storage_options
    from bertetl.observe import observe_run
    from bertetl.training.token_classification import TokenTrainConfig, train_tokens

    config = build_config(TokenTrainConfig, debug, **values)
    with user_errors(debug):
        options = parse_storage_options(storage_option)
        with observe_run("train", table, model_out, None, None, None, options, enriches=False):
            result = train_tokens(table, model_out, config, options)
    typer.echo(
        f"trained on {result.train_rows} rows in {result.seconds:.0f}s; held-out "
        f"({result.eval_rows} rows): entity precision {result.precision:.3f}, recall "
        f"{result.recall:.3f}, F1 {result.f1:.3f}; saved to {model_out}"
    )
    typer.echo(f"held-out metrics: {Path(model_out) / result.eval_dir / 'metrics.json'}")
