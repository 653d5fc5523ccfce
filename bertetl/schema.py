"""Column names and the output schema, built in one place."""

from __future__ import annotations

import json

import pyarrow as pa

EMBEDDING = "embedding"
LABEL = "label"
SCORE = "score"
SCORES = "scores"
LABELS = "labels"
ENRICH_ERROR = "enrich_error"
TOKENS = "tokens"
WINDOWS = "windows"
TRUNCATED = "truncated"
#: `--emit windows`: each output row is one token window of a row: its index in the row and
#: its character span in the text (`text[char_start:char_end]`).
WINDOW = "window"
CHAR_START = "char_start"
CHAR_END = "char_end"
#: `--emit rows,windows`: the row's pooled embedding, kept beside each window's own.
ROW_EMBEDDING = "row_embedding"
#: A keyed run's (`--key`) fingerprint of each row's text (`bertetl.io.keys`).
TEXT_FINGERPRINT = "text_fingerprint"

#: Internal columns (never written out) start with this; input columns may not.
INTERNAL_PREFIX = "__bertetl_"
#: Internal column carrying token ids between the tokenize and infer stages.
TOKENS_PREFIX = INTERNAL_PREFIX + "tokens_"
#: Internal column carrying each row's token stats from the tokenize stage to the output.
STATS_PREFIX = INTERNAL_PREFIX + "stats_"
#: Internal column carrying each token window's character span (`--emit windows`).
SPANS_PREFIX = INTERNAL_PREFIX + "spans_"
#: Internal column carrying each token window's own output (`--emit windows`).
WINDOW_OUTPUTS_PREFIX = INTERNAL_PREFIX + "window_outputs_"
#: Prefix of the internal embedding column of `--zero-shot-model` (read by zero-shot heads).
ZERO_SHOT_PREFIX = INTERNAL_PREFIX + "zero_shot_"
#: Working columns of the stages, dropped before writing. (Executors keep their own internal
#: columns, e.g. Ray's row positions, through the stages: those must survive `finish`.)
STAGE_PREFIXES = (
    TOKENS_PREFIX,
    STATS_PREFIX,
    ZERO_SHOT_PREFIX,
    SPANS_PREFIX,
    WINDOW_OUTPUTS_PREFIX,
)

TEXT_TYPES = (pa.string(), pa.large_string())


def is_text_type(dtype: pa.DataType) -> bool:
    """True for string, large_string and dictionaries of either."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return dtype in TEXT_TYPES


def embedding_field(prefix: str, dim: int) -> pa.Field:
    return pa.field(prefix + EMBEDDING, pa.list_(pa.float32(), dim))


def classify_fields(
    prefix: str, labels: list[str], multi_label: bool, include_scores: bool
) -> list[pa.Field]:
    """`label`, `score`, then optional `scores` (in id order) and `labels` (multi-label)."""
    fields = [pa.field(prefix + LABEL, pa.string()), pa.field(prefix + SCORE, pa.float32())]
    if include_scores:
        meta = {b"labels": json.dumps(labels).encode()}
        fields.append(pa.field(prefix + SCORES, pa.list_(pa.float32(), len(labels)), metadata=meta))
    if multi_label:
        fields.append(pa.field(prefix + LABELS, pa.list_(pa.string())))
    return fields


def token_stats_fields(prefix: str) -> list[pa.Field]:
    """`--token-stats`: content tokens of the whole text, token windows used, truncated."""
    return [
        pa.field(prefix + TOKENS, pa.int32()),
        pa.field(prefix + WINDOWS, pa.int16()),
        pa.field(prefix + TRUNCATED, pa.bool_()),
    ]


#: A token window's character span, as the tokenize stage keeps it per window.
SPAN_TYPE = pa.struct([pa.field(CHAR_START, pa.int64()), pa.field(CHAR_END, pa.int64())])


def window_fields(prefix: str) -> list[pa.Field]:
    """`--emit windows`: the window's index in its row and its character span in the text
    (null for a row with no window: its text could not be encoded)."""
    return [
        pa.field(prefix + WINDOW, pa.int32()),
        pa.field(prefix + CHAR_START, pa.int64()),
        pa.field(prefix + CHAR_END, pa.int64()),
    ]


def window_row_fields(
    prefix: str, model_fields: list[pa.Field], keep_row_embedding: bool
) -> list[pa.Field]:
    """The added columns of `--emit windows` output rows, before the token stats and the
    error: the window fields, the model's (the window's own embedding), then with
    `keep_row_embedding` the row's pooled embedding as `row_embedding`."""
    fields = [*window_fields(prefix), *model_fields]
    if keep_row_embedding:
        embedding = next(f for f in model_fields if f.name == prefix + EMBEDDING)
        fields.append(embedding.with_name(prefix + ROW_EMBEDDING))
    return fields


def error_field(prefix: str) -> pa.Field:
    return pa.field(prefix + ENRICH_ERROR, pa.string())


def output_schema(input_schema: pa.Schema, added: list[pa.Field]) -> pa.Schema:
    """Input columns first and unchanged, then the added ones; refuses name clashes."""
    from bertetl.errors import InputError

    internal = [name for name in input_schema.names if name.startswith(INTERNAL_PREFIX)]
    if internal:
        raise InputError(
            f"input column(s) {internal} start with {INTERNAL_PREFIX!r}, which bertetl "
            "keeps for its own working columns; rename them"
        )
    clash = [f.name for f in added if f.name in input_schema.names]
    if clash:
        raise InputError(
            f"output column(s) {clash} already exist in the input; "
            "pick another --prefix so the new columns do not overwrite them"
        )
    return pa.schema(list(input_schema) + added, metadata=input_schema.metadata)
