"""Per-row text checks and fast-tokenizer calls, one window of rows at a time."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.engine.model_files import max_length_for
from bertetl.report import StageCounters
from bertetl.schema import ENRICH_ERROR, TOKENS_PREFIX

NULL_TEXT = "text is null"
EMPTY_TEXT = "text is empty"
BLANK_TEXT = "text is whitespace-only"


def as_plain_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array with dictionaries decoded (a text column becomes (large_)string)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def text_problems(text: pa.Array) -> pa.Array:
    """Per row: why the text cannot be encoded (null, empty, whitespace-only), else null."""
    length = pc.utf8_length(text)
    trimmed_length = pc.utf8_length(pc.utf8_trim_whitespace(text))
    return pc.case_when(
        pc.make_struct(
            pc.is_null(text),
            pc.fill_null(pc.equal(length, 0), False),
            pc.fill_null(pc.equal(trimmed_length, 0), False),
        ),
        pa.scalar(NULL_TEXT),
        pa.scalar(EMPTY_TEXT),
        pa.scalar(BLANK_TEXT),
        pa.scalar(None, pa.string()),
    )


class ValidateTextStage:
    """Appends `enrich_error` saying why a row's text cannot be encoded (null when it can)."""

    name = "validate"

    def __init__(self, text_column: str, prefix: str = "") -> None:
        self.text_column = text_column
        self.error_column = prefix + ENRICH_ERROR
        self.counters = StageCounters()

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.text_column,)

    @property
    def produces(self) -> tuple[str, ...]:
        return (self.error_column,)

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            started = time.perf_counter()
            problems = text_problems(as_plain_text(batch.column(self.text_column)))
            out = batch.append_column(self.error_column, problems)
            self.counters.rows += batch.num_rows
            self.counters.batches += 1
            self.counters.seconds += time.perf_counter() - started
            yield out


class TokenizeStage:
    """Tokenizes the valid rows' text with the model's fast tokenizer, truncating at max length.

    Appends a `list<int32>` token column (empty for rows that `ValidateTextStage` rejected),
    which the infer stage consumes and drops.
    """

    name = "tokenize"

    def __init__(
        self,
        model_dir: Path,
        text_column: str,
        error_column: str,
        tokens_key: str,
        max_length: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.text_column = text_column
        self.error_column = error_column
        self.tokens_column = TOKENS_PREFIX + tokens_key
        self.max_length = max_length_for(self.model_dir, max_length)
        self.truncated_rows = 0
        self.counters = StageCounters()
        self._tokenizer: Any = None

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.text_column, self.error_column)

    @property
    def produces(self) -> tuple[str, ...]:
        return (self.tokens_column,)

    def setup(self) -> None:
        from transformers import AutoTokenizer

        from bertetl.errors import ModelError

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                self.model_dir, local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the tokenizer of {self.model_dir}: {e}") from e
        if not tokenizer.is_fast:
            raise ModelError(f"{self.model_dir}: no fast tokenizer (tokenizer.json) could be built")
        self._tokenizer = tokenizer

    def teardown(self) -> None:
        self._tokenizer = None

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special tokens added, truncated at `max_length`."""
        if self._tokenizer is None:
            raise RuntimeError("TokenizeStage.encode before setup()")
        encoded = self._tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        self.truncated_rows += sum(1 for e in encoded.encodings if e.overflowing)
        return encoded["input_ids"]

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            started = time.perf_counter()
            valid = np.flatnonzero(
                pc.is_null(batch.column(self.error_column)).to_numpy(zero_copy_only=False)
            )
            text = as_plain_text(batch.column(self.text_column)).take(pa.array(valid))
            ids = self.encode(text.to_pylist()) if len(valid) else []
            lengths = np.zeros(batch.num_rows, dtype=np.int32)
            lengths[valid] = [len(row) for row in ids]
            offsets = np.zeros(batch.num_rows + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            values = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
            tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
            self.counters.rows += batch.num_rows
            self.counters.batches += 1
            self.counters.real_tokens += int(offsets[-1])
            self.counters.seconds += time.perf_counter() - started
            yield batch.append_column(self.tokens_column, tokens)
