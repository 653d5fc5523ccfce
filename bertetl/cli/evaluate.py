"""`bertetl evaluate`: a classifier against a labelled table's true labels, in this process."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from bertetl.cli.common import (
    OPTION_NAMES,
    Debug,
    StorageOption,
    build_config,
    help_of,
    setup_logging,
    user_errors,
)
from bertetl.cli.options import ENGINE_OPTIONS, engine_options
from bertetl.config import EngineConfig
from bertetl.evaluate.config import EvaluateConfig

#: Engine options evaluate has no use for: it embeds nothing and always keeps every score.
NOT_HERE = (
    "embed_model",
    "include_scores",
    "ray_group_rows",
    "classify",
    "zero_shot",
    "zero_shot_template",
    "zero_shot_temperature",
    "zero_shot_min_score",
    "zero_shot_model",
)
#: Engine options that also mean something with --predictions.
COLUMNS = ("text_column", "prefix")

EVALUATE = {name: info.default for name, info in EvaluateConfig.model_fields.items()}


def _engine(engine: EngineConfig, debug: bool = False) -> EngineConfig:
    return engine


#: The shared engine options (their defaults, help and validation live in one place), built
#: into an `EngineConfig` only when --classify-model is given: with --predictions there is no
#: model, and `EngineConfig` needs one.
build_engine = engine_options(exclude=NOT_HERE)(_engine)
ENGINE_PARAMETERS = [
    p for p in inspect.signature(build_engine).parameters.values() if p.name != "debug"
]
DEFAULTS = {o.name: o.default for o in ENGINE_OPTIONS if o.name not in NOT_HERE}


def usage_error(message: str) -> NoReturn:
    """Options that do not go together: one line on stderr, exit code 2 (also with --debug:
    there is no traceback to show)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def with_engine_options(command: Any) -> Any:
    """Add the engine options to `command`'s signature and hand it `engine` (an
    `EngineConfig` with --classify-model, else None) and `columns` (text column, prefix)."""
    own = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.name not in ("engine", "columns")
    ]
    positional = [p for p in own if p.default is inspect.Parameter.empty]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in positional]
    parameters = [*positional, *ENGINE_PARAMETERS, *rest]

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        engine_values = {p.name: values.pop(p.name) for p in ENGINE_PARAMETERS}
        columns = {name: engine_values[name] for name in COLUMNS}
        engine = None
        if engine_values["classify_model"] is not None:
            engine = build_engine(**engine_values, debug=values.get("debug", False))
        else:
            given = [
                name
                for name, value in engine_values.items()
                if name not in COLUMNS and value is not None and value != DEFAULTS[name]
            ]
            if given:
                flags = ", ".join(
                    OPTION_NAMES.get(name, "--" + name.replace("_", "-")) for name in given
                )
                usage_error(
                    f"{flags}: engine options need --classify-model (with --predictions no "
                    "model runs)"
                )
        return command(engine=engine, columns=columns, **values)

    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # Typer must read the new signature, not the command's
    return wrapper


@with_engine_options
def evaluate(
    table: Annotated[
        str,
        typer.Argument(
            help="Labelled Parquet file, directory (hive folders kept) or glob; or s3://... URI."
        ),
    ],
    engine: EngineConfig | None,
    columns: dict[str, Any],
    label_column: Annotated[str, typer.Option(help=help_of(EvaluateConfig, "label_column"))],
    out: Annotated[
        str,  # not a Path: `s3://...` is refused by name, not turned into a folder `s3:`
        typer.Option(
            help="Local folder for metrics.json, the plots and report.html: new, empty, or an "
            "earlier evaluation (replaced)."
        ),
    ],
    predictions: Annotated[
        bool,
        typer.Option(
            "--predictions",
            help="The table is already enriched (`label`, `score`, `scores`, `labels` from "
            "`enrich --classify-model --scores`): use those columns, run no model.",
        ),
    ] = False,
    calibration_bins: Annotated[
        int, typer.Option(help=help_of(EvaluateConfig, "calibration_bins"))
    ] = EVALUATE["calibration_bins"],
    confused_pairs: Annotated[
        int, typer.Option(help=help_of(EvaluateConfig, "confused_pairs"))
    ] = EVALUATE["confused_pairs"],
    examples: Annotated[int, typer.Option(help=help_of(EvaluateConfig, "examples"))] = EVALUATE[
        "examples"
    ],
    storage_option: StorageOption = None,
    debug: Debug = False,
) -> None:
    """Evaluate a classifier on TABLE's true labels: metrics, plots and report.html in OUT.

    Give --classify-model to run the model over TABLE through the engine (streaming,
    batching, every engine option and executor apply), or --predictions when TABLE already
    holds its predictions. Single-label (one label per row) and multi-label (a list per row)
    models. True labels the model does not know are an error, before any model work.
    Metrics come from scikit-learn; metrics.json's schema is in docs/EVALUATE.md.
    TABLE may be on an object store (s3://BUCKET/PREFIX, with --storage-option;
    docs/STORAGE.md); OUT is a local folder.
    """
    setup_logging(debug)
    if predictions == (engine is not None):
        usage_error("give exactly one of --classify-model M / --predictions")
    config = build_config(
        EvaluateConfig,
        debug,
        label_column=label_column,
        engine=engine,
        text_column=None if engine else columns["text_column"],
        prefix=None if engine else columns["prefix"],
        calibration_bins=calibration_bins,
        confused_pairs=confused_pairs,
        examples=examples,
    )
    from bertetl.evaluate.run import evaluate as run
    from bertetl.io.stores.locations import parse_storage_options
    from bertetl.observe import observe_run

    with user_errors(debug):
        options = parse_storage_options(storage_option)
        with observe_run("evaluate", table, out, engine, None, None, options, enriches=False):
            result = run(table, out, config, options)
    print_summary(result.metrics, Path(out) / result.report.name)


def print_summary(metrics: dict[str, Any], report: Path) -> None:
    """Two lines on stdout (the headline figures, where the report is); warnings on stderr."""
    from bertetl.evaluate.page import number

    rows = metrics["rows"]
    figures = [("accuracy", metrics["accuracy"])]
    if metrics["balanced_accuracy"] is not None:
        figures.append(("balanced accuracy", metrics["balanced_accuracy"]))
    figures.append(("macro-F1", metrics["f1"].get("macro")))
    if metrics["roc_auc"]["macro"] is not None:
        figures.append(("ROC-AUC", metrics["roc_auc"]["macro"]))
    shown = ", ".join(f"{name} {number(value, 3)}" for name, value in figures)
    typer.echo(
        f"evaluated {rows['evaluated']} of {rows['total']} rows ({rows['without_label']} "
        f"without a label, {rows['without_prediction']} without a prediction): {shown}"
    )
    for warning in metrics["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"report: {report}")
