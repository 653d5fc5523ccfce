"""The `bertetl` Typer app: one module per command, registered here."""

from __future__ import annotations

import typer

from bertetl.cli.bench import bench
from bertetl.cli.enrich import enrich
from bertetl.cli.evaluate import evaluate
from bertetl.cli.partitioned import backfill, incremental
from bertetl.cli.summary import summary
from bertetl.cli.train import train

app = typer.Typer(
    help="Stream Parquet text tables through BERT encoders: embeddings and classifications.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for command in (enrich, backfill, incremental, summary, train, evaluate):
    app.command()(command)
app.add_typer(bench, name="bench")
