"""The texts the systems bench runs on: its own input sets (real reviews, a length mix) or
yours (`PATH[:COLUMN]`, also on an object store)."""

from __future__ import annotations

import os

from bertetl.bench.systems.config import BenchConfig
from bertetl.errors import InputError
from bertetl.io.inputs import resolve_inputs
from bertetl.io.read import discover, read_columns, read_schema
from bertetl.io.stores.locations import StorageError

#: The input sets bertetl brings; any other is `PATH[:COLUMN]`.
BUILT_IN_INPUTS = ("reviews", "synthetic")


def own_input(inputs: str) -> tuple[str, str]:
    """`PATH[:COLUMN]` as (path, column), the column `text` by default. PATH is a `.parquet`
    file, a local folder, or an object-store URI (a file or a prefix); the colon of `s3://` is
    not a column's."""
    scheme, sep, rest = inputs.partition("://")
    prefix = scheme + sep if sep else ""
    path, _, column = (rest if sep else inputs).partition(":")
    path = prefix + path
    if not (path.endswith(".parquet") or sep or os.path.isdir(path)):
        raise InputError(
            f"unknown input set {inputs!r} ({', '.join(BUILT_IN_INPUTS)}, FILE.parquet, a "
            "folder or an s3://... URI, each with an optional :COLUMN)"
        )
    return path, column or "text"


def check_inputs(config: BenchConfig) -> None:
    """Find the Parquet files of each own input set (`PATH[:COLUMN]`) before any system
    runs: a missing file, bucket or endpoint is one error naming it, not one per system."""
    own = [own_input(i) for i in config.inputs if i not in BUILT_IN_INPUTS]
    paths = [path for path, _ in own]
    if config.storage_options and not paths:
        raise StorageError("--storage-option is for an s3://... input set (--inputs)")
    for where, (path, column) in zip(
        resolve_inputs(paths, config.storage_options), own, strict=True
    ):
        for file in discover(where):
            names = read_schema(file).names
            if column not in names:
                raise InputError(
                    f"--inputs {path}:{column}: {file.path} has no column {column!r}; its "
                    f"columns: {', '.join(names)}"
                )


def input_texts(inputs: str, rows: int, storage_options: dict[str, str] | None = None) -> list[str]:
    """`reviews`, `synthetic`, or `PATH[:COLUMN]` (`own_input`; opened with
    `storage_options` on an object store): your own texts, non-blank ones, cycled to `rows`."""
    from bertetl.bench.corpus import length_mix, rotten_tomatoes

    if inputs not in BUILT_IN_INPUTS:
        path, column = own_input(inputs)
        (where,) = resolve_inputs([path], storage_options)
        texts = [
            text
            for file in discover(where)
            for text in read_columns(file, [column]).column(0).to_pylist()
        ]
        own = [t for t in texts if t and t.strip()]
        if not own:
            raise InputError(f"{path}: column {column!r} holds no text")
        return [own[i % len(own)] for i in range(rows)]
    reviews = [t for t in rotten_tomatoes().column("text").to_pylist() if t and t.strip()]
    if inputs == "reviews":
        return [reviews[i % len(reviews)] for i in range(rows)]
    vocabulary = sorted({w for t in reviews[:3000] for w in t.split()})
    return length_mix(rows, vocabulary)
