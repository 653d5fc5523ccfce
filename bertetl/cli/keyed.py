"""The options of a keyed run (`--key` on enrich and incremental), declared once, and how
the CLI runs and reports one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from bertetl.cli.common import help_of

KEY_HELP = (
    "Key column(s), COL[,COL...]: rows are matched by key across runs, so a rerun infers only "
    "new and changed text, reuses the rest wherever it moved, and deletes keys gone from "
    "SOURCE (docs/KEYED.md)."
)


def _field_help(name: str) -> str:
    from bertetl.runs.keyed.plan import KeyedOptions

    return help_of(KeyedOptions, name)


Key = Annotated[str | None, typer.Option(help=KEY_HELP)]
KeepDeleted = Annotated[
    bool, typer.Option(help="With --key: keep rows whose key is no longer in SOURCE.")
]
OutputColumns = Annotated[
    str,
    typer.Option(
        help="With --key: all (every input column and the enrichments) or key (the key "
        "columns and the enrichments: the side table a warehouse joins on)."
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        help="No model work, nothing written: print what the run would infer, reuse, "
        "deduplicate and delete, and an estimate of the model's time. Exit 0."
    ),
]


def keyed_options(key: str | None, keep_deleted: bool, output_columns: str) -> object | None:
    """The `KeyedOptions` of the run; None without `--key` (then `--keep-deleted` and
    `--output-columns key` are refused, one line)."""
    from bertetl.errors import ConfigError
    from bertetl.io.keys import parse_key
    from bertetl.runs.keyed import KeyedOptions

    names = parse_key(key)
    if output_columns not in ("all", "key"):
        raise ConfigError(f"--output-columns {output_columns!r}: use all or key")
    if not names:
        if keep_deleted or output_columns != "all":
            raise ConfigError("--keep-deleted and --output-columns key need --key")
        return None
    mode: Literal["all", "key"] = "key" if output_columns == "key" else "all"
    return KeyedOptions(key=names, keep_deleted=keep_deleted, output_columns=mode)


def finish(kind: str, report: object, report_path: Path | None) -> None:
    """The final line, and the report as JSON into `report_path` when given."""
    from bertetl.cli.common import write_json

    typer.echo(report.line(kind))  # type: ignore[attr-defined]
    if report_path is not None:
        write_json(report_path, report.to_dict())  # type: ignore[attr-defined]
