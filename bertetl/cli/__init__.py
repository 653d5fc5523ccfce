"""The `bertetl` command line."""

from bertetl.cli.app import app

__all__ = ["app"]
