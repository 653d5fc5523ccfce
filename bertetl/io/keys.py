"""Keys of a keyed run (`--key`): the text fingerprint each output row carries, the checks
of SOURCE's keys, and the record of the last keyed commit.

A row's *text fingerprint* is BLAKE2b-128 of its text's UTF-8 bytes (`hashlib`: stable across
processes, machines and library versions, unlike a polars or Arrow hash), kept in the output
column `text_fingerprint` so that a later run finds which keys' text changed even where the
output holds no text (`--output-columns key`). The model and config are not in it: a keyed
record carries the config hash, and a changed config reuses nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from bertetl.errors import InputError
from bertetl.io.manifest import FileFingerprint

#: Bytes of a text fingerprint.
FINGERPRINT_BYTES = 16
FINGERPRINT_TYPE = pa.binary(FINGERPRINT_BYTES)
#: Keys named in a refusal (then how many more).
SHOWN_KEYS = 5
#: Where a folder or prefix DEST keeps its keyed record (readers skip names starting with `_`).
RECORD_NAME = "_bertetl_keyed.json"
#: The fingerprint of a null text (so such rows, too, are inferred once and found again).
NULL_FINGERPRINT = hashlib.blake2b(
    b"", digest_size=FINGERPRINT_BYTES, person=b"bertetl-null"
).digest()


def text_fingerprints(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The fingerprint of each row's text (`NULL_FINGERPRINT` for a null text)."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if pa.types.is_dictionary(text.type):
        text = text.dictionary_decode()
    raw = pc.cast(text, pa.large_binary())  # bytes as they are, valid UTF-8 or not
    digest = hashlib.blake2b
    return pa.array(
        [
            NULL_FINGERPRINT
            if value is None
            else digest(value, digest_size=FINGERPRINT_BYTES).digest()
            for value in raw.to_pylist()
        ],
        FINGERPRINT_TYPE,
    )


def parse_key(text: str | None) -> list[str]:
    """`--key COL[,COL...]` as column names (empty: no key)."""
    if not text:
        return []
    names = [name.strip() for name in text.split(",")]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise InputError(f"--key {text!r}: name each key column once, separated by commas")
    return names


def check_key_columns(schema: pa.Schema, key: list[str], where: str) -> None:
    """Refuse (one line) a key column that `schema` (of `where`) lacks."""
    missing = [name for name in key if name not in schema.names]
    if missing:
        raise InputError(
            f"{where}: no key column {', '.join(missing)} (columns: {', '.join(schema.names)})"
        )


def _shown(frame: pl.DataFrame, key: list[str]) -> str:
    rows = frame.head(SHOWN_KEYS).select(key).rows()
    return ", ".join(
        str(row[0]) if len(row) == 1 else "(" + ", ".join(map(str, row)) + ")" for row in rows
    )


def check_keys(keys: pl.DataFrame, key: list[str], file_column: str) -> None:
    """Refuse SOURCE's null and duplicate keys (`keys`: the key columns and the file of each
    row) in one line naming a few and the count, before any model work."""
    nulls = keys.filter(pl.any_horizontal([pl.col(name).is_null() for name in key]))
    if nulls.height:
        files = nulls.get_column(file_column).unique(maintain_order=True).head(SHOWN_KEYS)
        raise InputError(
            f"{nulls.height:,} row(s) of SOURCE have a null key ({', '.join(key)}), e.g. in "
            f"{', '.join(files.to_list())}; give every row a key (or drop those rows)"
        )
    counted = keys.group_by(key, maintain_order=True).agg(pl.len().alias("__rows"))
    repeated = counted.filter(pl.col("__rows") > 1)
    if repeated.height:
        more = repeated.height - SHOWN_KEYS
        tail = f" and {more:,} more" if more > 0 else ""
        raise InputError(
            f"{repeated.height:,} key(s) ({', '.join(key)}) appear in more than one row of "
            f"SOURCE: {_shown(repeated, key)}{tail}; a key must name one row"
        )


class KeyedRecord(BaseModel):
    """What a keyed commit records (in `_bertetl_keyed.json`, or in a table commit's
    metadata): the key, the config, the inputs it saw, and the run's counts."""

    keyed: int = 1
    key: list[str]
    output_columns: str
    config_hash: str
    models: dict[str, str] = Field(default_factory=dict)
    #: Each input file as enriched, and its output's path below DEST ("" for a table).
    inputs: list[FileFingerprint] = Field(default_factory=list)
    outputs: dict[str, str] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    #: Seconds the model took, and the rows it saw: the dry run's rate.
    model_seconds: float = 0.0
    #: int8/uint8 embeddings: the ranges calibrated on the first run's first window, used by
    #: every later run with the same config (so all rows are quantized alike).
    embedding_ranges: dict[str, list[list[float]]] = Field(default_factory=dict)
    finished: str = ""

    def same_outputs(self, key: list[str], output_columns: str, config_hash: str) -> bool:
        """Whether a run with these settings may reuse this record's outputs."""
        return (self.key, self.output_columns, self.config_hash) == (
            key,
            output_columns,
            config_hash,
        )

    @classmethod
    def parse(cls, text: str | None) -> KeyedRecord | None:
        """The record in `text`; None when there is none or it is not a keyed record (a
        partition manifest, a damaged file: then nothing is reused)."""
        if not text:
            return None
        try:
            record = cls.model_validate_json(text)
        except ValueError:
            return None
        return record if record.keyed else None


def key_table(batch: pa.RecordBatch | pa.Table, key: list[str]) -> dict[str, Any]:
    """The key columns of `batch`, by name (for a polars frame)."""
    return {name: batch.column(name) for name in key}
