"""`python -m bertetl` runs the CLI."""

from bertetl.cli import app

app()
