"""`bertetl train`: fine-tune a sequence classifier on a labelled table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bertetl.cli.common import Debug, build_config, help_of, setup_logging, user_errors
from bertetl.config import Device, TrainConfig

TRAIN = {name: info.default for name, info in TrainConfig.model_fields.items()}


def train(
    table: Annotated[str, typer.Argument(help="Labelled Parquet file, directory or glob.")],
    model_out: Annotated[str, typer.Argument(help="Directory to write the fine-tuned model to.")],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")],
    label_column: Annotated[str, typer.Option(help="Column holding the label (any type).")],
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
    debug: Debug = False,
) -> None:
    """Fine-tune a sequence classifier on TABLE and save it to MODEL_OUT.

    Holds out a stratified split, reports accuracy and macro-F1 on it (its whole `bertetl
    evaluate` report, metrics.json, plots and report.html, goes to MODEL_OUT/eval/), and saves
    a standard Hugging Face model dir (safetensors, tokenizer, id2label) that
    `enrich --classify-model` loads. MODEL_OUT must be new, empty, or an earlier `bertetl
    train` output, which is replaced (atomically, once the new model is saved); any other
    folder is refused.
    """
    setup_logging(debug)
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
    from bertetl.training.train import train as run

    with user_errors(debug):
        result = run(table, model_out, config)
    typer.echo(
        f"trained on {result.train_rows} rows in {result.seconds:.0f}s; held-out "
        f"({result.eval_rows} rows): accuracy {result.accuracy:.3f}, macro-F1 "
        f"{result.macro_f1:.3f}; saved to {model_out}"
    )
    typer.echo(f"held-out report: {Path(model_out) / result.eval_dir / 'report.html'}")
