"""The engine options, declared once and shared by every command that enriches.

`engine_options` adds them to a command's signature (Typer reads `inspect.signature`) and
hands the command one validated `EngineConfig` as its `engine` argument. Defaults, types and
help come from the config models, so a default lives in exactly one place.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from bertetl.cli.common import build_config, fail, help_of, user_errors
from bertetl.config import EngineConfig
from bertetl.executor_registry import (
    DEFAULT_EXECUTOR,
    EXECUTORS,
    FLAT_EXECUTOR_OPTIONS,
    ExecutorName,
)
from bertetl.io.vector_index import IndexSpec, parse_index
from bertetl.observe.options import ObserveOptions


@dataclass(frozen=True)
class EngineOption:
    """One CLI option: the config key it fills, its type, default and help."""

    name: str  # the parameter (and EngineConfig's flat key)
    annotation: Any
    default: Any
    help: str
    flag: str | None = None  # the option's spelling when not --name-with-dashes

    def parameter(self) -> inspect.Parameter:
        option = (
            typer.Option(self.flag, help=self.help) if self.flag else typer.Option(help=self.help)
        )
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[self.annotation, option],
            default=self.default,
        )


def _from_model(
    model: type[BaseModel], name: str, key: str | None = None, **kw: Any
) -> EngineOption:
    info = model.model_fields[name]
    default = inspect.Parameter.empty if info.is_required() else info.default
    return EngineOption(key or name, info.annotation, default, help_of(model, name), **kw)


def _repeatable(model: type[BaseModel], name: str) -> EngineOption:
    """A repeatable text option (`--classify a=DIR --classify b=DIR`) for a field of heads,
    which the config parses from its CLI spelling."""
    return EngineOption(name, list[str] | None, None, help_of(model, name) + " [repeatable]")


def _executor_options() -> list[EngineOption]:
    """`--executor` (a registered executor's name) and each executor's options under their
    flat CLI names, all from the registry (`bertetl.executor_registry.EXECUTORS`)."""
    described = help_of(EngineConfig, "executor")
    options = [EngineOption("executor", ExecutorName, DEFAULT_EXECUTOR, described)]
    for flat, (kind, field) in FLAT_EXECUTOR_OPTIONS.items():
        options.append(_from_model(EXECUTORS[kind].options, field, key=flat))
    return options


#: Every engine option, in `--help` order.
ENGINE_OPTIONS: list[EngineOption] = [
    _from_model(EngineConfig, "text_column"),
    _from_model(EngineConfig, "embed_model"),
    _from_model(EngineConfig, "prompt"),
    _from_model(EngineConfig, "prompt_name"),
    _from_model(EngineConfig, "embed_dim"),
    _from_model(EngineConfig, "embed_precision"),
    _from_model(EngineConfig, "classify_model"),
    _repeatable(EngineConfig, "classify"),
    _repeatable(EngineConfig, "zero_shot"),
    _from_model(EngineConfig, "zero_shot_template"),
    _from_model(EngineConfig, "zero_shot_temperature"),
    _from_model(EngineConfig, "zero_shot_min_score"),
    _from_model(EngineConfig, "zero_shot_model"),
    _repeatable(EngineConfig, "ner"),
    _from_model(EngineConfig, "ner_aggregation"),
    EngineOption(
        "ner_labels", list[str] | None, None, help_of(EngineConfig, "ner_labels") + " [repeatable]"
    ),
    _from_model(EngineConfig, "redact"),
    _from_model(EngineConfig, "device"),
    _from_model(EngineConfig, "dtype"),
    _from_model(EngineConfig, "quantize"),
    _from_model(EngineConfig, "backend"),
    _from_model(EngineConfig, "unpadded"),
    _from_model(EngineConfig, "compile"),
    _from_model(EngineConfig, "cuda_graphs"),
    _from_model(EngineConfig, "batch_tokens"),
    _from_model(EngineConfig, "max_batch_rows"),
    _from_model(EngineConfig, "max_length"),
    _from_model(EngineConfig, "long_text"),
    _from_model(EngineConfig, "window_overlap"),
    _from_model(EngineConfig, "max_windows"),
    _from_model(EngineConfig, "emit"),
    _from_model(EngineConfig, "token_stats"),
    _from_model(EngineConfig, "prefix"),
    _from_model(EngineConfig, "window_rows"),
    _from_model(EngineConfig, "include_scores", flag="--scores"),
    _from_model(EngineConfig, "multi_label_threshold", flag="--threshold"),
    _from_model(EngineConfig, "allow_pickle"),
    *_executor_options(),
]


def engine_options(
    exclude: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command every engine option (but `exclude`) and call it with `engine`, the
    validated `EngineConfig` (a bad value: one line naming the option, exit code 2).

    The command declares `engine: EngineConfig` and `debug: bool`; its other parameters stay.
    """
    options = [o for o in ENGINE_OPTIONS if o.name not in exclude]
    names = {o.name for o in options}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "engine"]
        positional = [p for p in own if p.default is inspect.Parameter.empty]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in positional]
        required = [o.parameter() for o in options if o.default is inspect.Parameter.empty]
        optional = [o.parameter() for o in options if o.default is not inspect.Parameter.empty]
        parameters = [*positional, *required, *optional, *rest]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            engine_values = {name: values.pop(name) for name in list(values) if name in names}
            debug = values.get("debug", False)
            with user_errors(debug):  # a label file that cannot be read: one line
                engine = build_config(EngineConfig, debug, **engine_values)
            return command(engine=engine, **values)

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # Typer must read the new signature, not the command's
        return wrapper

    return decorate


#: `--pushgateway` and `--cost-per-hour` (`bertetl.observe.ObserveOptions`), declared once for
#: every command that enriches.
Pushgateway = Annotated[
    str | None, typer.Option(metavar="URL", help=help_of(ObserveOptions, "pushgateway"))
]
CostPerHour = Annotated[
    float | None, typer.Option(metavar="PRICE", help=help_of(ObserveOptions, "cost_per_hour"))
]


def observe_options(pushgateway: str | None, cost_per_hour: float | None, debug: bool) -> Any:
    """The validated `ObserveOptions` (a bad value: one line naming its option, exit 2)."""
    return build_config(ObserveOptions, debug, pushgateway=pushgateway, cost_per_hour=cost_per_hour)


# -- the vector index DEST builds (lance://, postgresql://), from `IndexSpec`'s fields ---------

Index = Annotated[str | None, typer.Option("--index", help=help_of(IndexSpec, "kind"))]
IndexParam = Annotated[
    list[str] | None,
    typer.Option("--index-param", help=help_of(IndexSpec, "params") + " KEY=N [repeatable]"),
]
IndexMetric = Annotated[str, typer.Option("--index-metric", help=help_of(IndexSpec, "metric"))]
#: `--index-metric`'s default, from the model.
INDEX_METRIC: str = IndexSpec.model_fields["metric"].default


def index_spec(
    kind: str | None, params: list[str] | None, metric: str, debug: bool
) -> IndexSpec | None:
    """`--index`, `--index-param`s and `--index-metric` as an `IndexSpec` (None without
    `--index`); a bad one is one line, exit code 2."""
    from pydantic import ValidationError

    try:
        return parse_index(kind, params, metric)
    except (ValueError, ValidationError) as e:
        fail(str(e).splitlines()[0] if not isinstance(e, ValidationError) else _first(e), debug, 2)


def _first(error: Any) -> str:
    problem = error.errors()[0]
    return f"--index-{problem['loc'][0]}: {problem['msg']}"
