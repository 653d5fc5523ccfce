"""What every command shares: one-line errors, config validation into exit code 2, logging."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import pyarrow as pa
import typer
from pydantic import BaseModel, ValidationError

from bertetl.errors import BertEtlError
from bertetl.executor_registry import FLAT_EXECUTOR_OPTIONS

#: Errors from libraries that reach the CLI as one line rather than a traceback.
SYSTEM_ERRORS = (OSError, pa.ArrowException)

#: Config fields whose CLI option is not simply `--field-name`.
OPTION_NAMES = {"include_scores": "--scores", "multi_label_threshold": "--threshold"}

Debug = Annotated[bool, typer.Option(help="Show tracebacks on errors.")]
StorageOption = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        help="Option of an s3://, gs:// or abfs:// SOURCE or DEST, repeatable: endpoint_url, "
        "region, connection_string, ... (docs/STORAGE.md). Credentials come from each cloud's "
        "standard chain (environment, profile, instance role, managed identity).",
    ),
]

ModelT = TypeVar("ModelT", bound=BaseModel)


def fail(message: str, debug: bool, code: int = 1) -> NoReturn:
    """Re-raise with `--debug`, else print one line on stderr and exit with `code`."""
    if debug:
        raise
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn bertetl's errors and I/O or Arrow errors into one line on stderr and exit 1."""
    try:
        yield
    except BertEtlError as e:
        fail(str(e), debug)
    except SYSTEM_ERRORS as e:
        fail(f"{type(e).__name__}: {e}", debug)


def build_config(model: type[ModelT], debug: bool, **values: Any) -> ModelT:
    """`model(**values)` (None values left to the model's defaults); a validation error is
    one line naming the option, exit code 2."""
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["loc"]:
            name = _option_of(first["loc"])
            message = f"{OPTION_NAMES.get(name, '--' + name.replace('_', '-'))}: {message}"
        fail(message, debug, code=2)


def _option_of(loc: tuple[int | str, ...]) -> str:
    """The option a validation error's location names: its first part, but for an executor's
    option (`executor.local.workers`) the flat name the CLI takes (`workers`)."""
    if len(loc) >= 3 and loc[0] == "executor":
        for flat, where in FLAT_EXECUTOR_OPTIONS.items():
            if where == (loc[1], loc[2]):
                return flat
    return str(loc[0])


def help_of(model: type[BaseModel], name: str) -> str:
    """A config field's description, as an option's help."""
    return model.model_fields[name].description or ""


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's API calls, one per log
    if not debug:  # the Azure SDK logs each HTTP request (INFO) and each credential it tried
        logging.getLogger("azure").setLevel(logging.ERROR)  # (WARNING): the error says it once


def split_list(value: str) -> list[str]:
    """`a, b,c` -> ["a", "b", "c"]."""
    return [v.strip() for v in value.split(",") if v.strip()]


def write_json(path: Path, content: Any) -> None:
    """Write a report as JSON: to a temp file beside it, then renamed over it, so a reader
    sees the old report or the whole new one."""
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(content, indent=2, default=str))
    os.replace(temp, path)
