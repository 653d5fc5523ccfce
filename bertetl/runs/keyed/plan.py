"""Plan a keyed run (`--key`): which input files (or rows, for a table DEST) to write, which
rows to infer, reuse or deduplicate, and which keys to delete, before any model work.

What DEST holds is read from DEST itself: the key, text fingerprint and error of every row
(a folder's output files, a table's rows), and the record of the last keyed commit (its
config and the inputs it saw). A row takes the outputs DEST holds for its text fingerprint
(under the same config), wherever that row now is; every other distinct text is inferred
once; rows of the same new text share that inference (deduplicated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from bertetl.io.destinations import Destination
from bertetl.io.keys import (
    FINGERPRINT_TYPE,
    RECORD_NAME,
    KeyedRecord,
    check_key_columns,
    check_keys,
    text_fingerprints,
)
from bertetl.io.manifest import FileFingerprint, fingerprint_source
from bertetl.io.read import SourceFile, open_parquet, read_schema, stream
from bertetl.schema import ENRICH_ERROR, TEXT_FINGERPRINT

#: Internal columns of the planning frames.
FP, OUTPUT, ROW, OK, FILE = "__fp", "__output", "__row", "__ok", "__file"


class KeyedOptions(BaseModel):
    """What makes a run keyed, and how its outputs are shaped."""

    model_config = ConfigDict(frozen=True)

    key: list[str] = Field(description="Key columns: a row's identity across runs.")
    keep_deleted: bool = Field(
        False, description="Keep rows in DEST whose key is no longer in SOURCE."
    )
    output_columns: Literal["all", "key"] = Field(
        "all",
        description="all: every input column and the enrichments; key: the key columns and "
        "the enrichments (the side table a warehouse joins on).",
    )


@dataclass
class FilePlan:
    """One input file: whether its output is written (a folder: the whole file rewritten; a
    table: its changed rows upserted) and what its rows take."""

    file: SourceFile
    fingerprint: FileFingerprint
    #: Its output (a folder or prefix DEST), and that output's path below DEST.
    target: Any = None
    output: str = ""
    write: bool = True
    rows: int = 0
    inferred: int = 0
    reused: int = 0
    deduplicated: int = 0
    #: Rows it writes (all of a rewritten file's; a table: the changed ones).
    written: int = 0

    def counts(self) -> dict[str, Any]:
        return {
            "file": self.fingerprint.relative,
            "rows_in": self.rows,
            "rows_inferred": self.inferred,
            "rows_reused": self.reused,
            "rows_deduplicated": self.deduplicated,
            "rows_written": self.written,
            "action": "write" if self.write else "unchanged",
        }


@dataclass
class KeyedPlan:
    """What a keyed run will do (`plan_keyed`)."""

    options: KeyedOptions
    text_column: str
    fingerprint_column: str
    error_column: str
    config_hash: str
    models: dict[str, str]
    previous: KeyedRecord | None
    #: Whether DEST's outputs may be reused (same key, output columns and config).
    reuse: bool
    files: list[FilePlan]
    #: DEST's rows: key columns, FP, OK (enriched without error), OUTPUT (a folder's file)
    #: and ROW (a table's carried columns, hashed in this process).
    dest_rows: pl.DataFrame
    #: Distinct texts to infer (the text column and FP), in scratch; None: none.
    to_infer: Path | None
    #: The keys to delete from DEST, and SOURCE's keys.
    deletes: pl.DataFrame
    source_keys: pl.DataFrame
    #: A folder's outputs of inputs no longer in SOURCE: removed (or, with
    #: `--keep-deleted`, rewritten without the keys SOURCE now has elsewhere).
    orphans: list[Any] = field(default_factory=list)
    orphan_rewrites: list[Any] = field(default_factory=list)
    #: int8/uint8 embeddings: the ranges quantized with (the last keyed run's, with reuse).
    embedding_ranges: dict[str, list[list[float]]] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(getattr(f, name) for f in self.files)

    def counts(self) -> dict[str, int]:
        """The run's totals, as reports print them."""
        return {
            "rows_in": self.total("rows"),
            "rows_inferred": self.total("inferred"),
            "rows_reused": self.total("reused"),
            "rows_deduplicated": self.total("deduplicated"),
            "rows_deleted": self.deletes.height,
            "rows_written": self.total("written"),
        }

    @property
    def changes(self) -> bool:
        """Whether the run writes or deletes anything."""
        return bool(
            any(f.write and f.written for f in self.files)
            or self.deletes.height
            or self.orphans
            or self.orphan_rewrites
        )


def carried_columns(schema: pa.Schema, options: KeyedOptions, text_column: str) -> list[str]:
    """The input columns an output row carries: all, or the key columns only."""
    if options.output_columns == "key":
        return list(options.key)
    return [name for name in schema.names if not name.startswith("__bertetl_")]


def row_hashes(batch: pa.RecordBatch | pa.Table, columns: list[str]) -> pl.Series:
    """A hash of each row's carried `columns` (polars `hash_rows`: compared within this
    process only, never stored)."""
    frame = pl.from_arrow(pa.table({name: batch.column(name) for name in columns}))
    assert isinstance(frame, pl.DataFrame)
    return frame.hash_rows(seed=0)


def _frame(columns: dict[str, Any]) -> pl.DataFrame:
    frame = pl.from_arrow(pa.table(columns))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _empty_dest(key_types: dict[str, pa.DataType]) -> pl.DataFrame:
    return _frame(
        {
            **{name: pa.array([], data_type) for name, data_type in key_types.items()},
            FP: pa.array([], FINGERPRINT_TYPE),
            OK: pa.array([], pa.bool_()),
            OUTPUT: pa.array([], pa.string()),
            ROW: pa.array([], pa.uint64()),
        }
    )


def read_dest_rows(
    dest: Destination,
    outputs: list[Any],
    key: list[str],
    key_types: dict[str, pa.DataType],
    fingerprint: str,
    error: str,
    text_column: str,
    carried: list[str] | None,
) -> pl.DataFrame:
    """DEST's rows as planning sees them (key, FP, OK, OUTPUT, ROW); an output without the
    fingerprint column (written without --key) is fingerprinted from its text column."""
    parts: list[pl.DataFrame] = []

    def add(batch: pa.RecordBatch | pa.Table, output: str) -> None:
        names = batch.schema.names
        if any(name not in names for name in key):
            return  # not a keyed output of these keys: nothing in it can be found by key
        if fingerprint in names:
            fps = batch.column(fingerprint).cast(FINGERPRINT_TYPE)
        elif text_column in names:
            fps = text_fingerprints(batch.column(text_column))
        else:
            return
        ok = batch.column(error).is_null() if error in names else pa.array([True] * batch.num_rows)
        columns = {name: batch.column(name).cast(key_types[name]) for name in key}
        frame = _frame(
            {
                **columns,
                FP: fps,
                OK: ok,
                OUTPUT: pa.array([output] * batch.num_rows, pa.string()),
            }
        )
        if carried is not None and all(name in names for name in carried):
            frame = frame.with_columns(row_hashes(batch, carried).alias(ROW))
        else:
            frame = frame.with_columns(pl.lit(None, pl.UInt64).alias(ROW))
        parts.append(frame)

    if dest.capabilities.files:
        for output in outputs:
            try:
                parquet = open_parquet(output)
            except (pa.ArrowException, OSError):
                continue  # an unreadable output: its file is rewritten
            names = parquet.schema_arrow.names
            wanted = [n for n in [*key, fingerprint, error, text_column] if n in names]
            relative = dest.relative(output)
            for batch in parquet.iter_batches(columns=list(dict.fromkeys(wanted))):
                add(batch, relative)
    else:
        extra = [fingerprint, error, *(carried or []), text_column]
        for batch in dest.keyed_rows(key, list(dict.fromkeys(extra))):
            add(batch, "")
    if not parts:
        return _empty_dest(key_types)
    return pl.concat(parts, how="vertical_relaxed")


def source_files(
    files: list[SourceFile], previous: KeyedRecord | None
) -> list[tuple[SourceFile, FileFingerprint, pa.Schema]]:
    """Each input file with its fingerprint (re-hashed only when its size or mtime moved
    since the last keyed commit) and schema."""
    known = {f.relative: f for f in previous.inputs} if previous is not None else {}
    found = []
    for file in files:
        found.append(
            (
                file,
                fingerprint_source(file, file.relative, known.get(file.relative)),
                read_schema(file),
            )
        )
    return found


def key_types_of(schemas: list[pa.Schema], key: list[str]) -> dict[str, pa.DataType]:
    """The key columns' types (strings as large strings, so files that differ still join)."""
    types: dict[str, pa.DataType] = {}
    for name in key:
        data_type = schemas[0].field(name).type
        if pa.types.is_dictionary(data_type):
            data_type = data_type.value_type
        if data_type in (pa.string(), pa.large_string()):
            data_type = pa.large_string()
        types[name] = data_type
    return types


def error_column(prefix: str) -> str:
    return prefix + ENRICH_ERROR


def fingerprint_column(prefix: str) -> str:
    return prefix + TEXT_FINGERPRINT


def check_source_keys(
    listed: list[tuple[SourceFile, FileFingerprint, pa.Schema]], key: list[str]
) -> None:
    """Every file has the key columns; no key is null or repeated (one line each)."""
    for file, _, schema in listed:
        check_key_columns(schema, key, file.path)
    key_types = key_types_of([schema for _, _, schema in listed], key)
    parts = []
    for file, _, _ in listed:
        table = pq.read_table(file.fs_path, columns=key, filesystem=file.filesystem)
        columns = {name: table.column(name).cast(key_types[name]) for name in key}
        columns[FILE] = pa.array([file.path] * table.num_rows, pa.string())
        parts.append(_frame(columns))
    check_keys(pl.concat(parts), key, FILE)


def batches_with_fingerprints(file: SourceFile, text_column: str, batch_rows: int) -> Any:
    """Each batch of `file` with its text fingerprints."""
    for batch in stream(file, batch_rows):
        yield batch, text_fingerprints(batch.column(text_column))


def fingerprint_series(fps: pa.Array) -> pl.Series:
    """Fingerprints as a polars binary series (no Python objects)."""
    series = pl.from_arrow(fps.cast(pa.binary()))
    assert isinstance(series, pl.Series)
    return series.alias(FP)


def latest_by_key(rows: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """DEST's rows, one per key (a key twice, after a killed run: its last row)."""
    return rows.unique(subset=key, keep="last", maintain_order=True)


def changed_rows(
    batch: pa.RecordBatch,
    fps: pa.Array,
    dest_rows: pl.DataFrame,
    key: list[str],
    key_types: dict[str, pa.DataType],
    carried: list[str] | None,
) -> pl.Series:
    """Which rows of `batch` differ from DEST's row of the same key (a table DEST): a new
    key, another text, or (`carried`) another value in a carried column."""
    frame = _frame({name: batch.column(name).cast(key_types[name]) for name in key})
    frame = frame.with_columns(fingerprint_series(fps))
    columns = [*key, FP]
    if carried is not None:
        frame = frame.with_columns(row_hashes(batch, carried).alias(ROW))
        columns.append(ROW)
    known = dest_rows.select(columns)  # one row per key (`latest_by_key`)
    joined = frame.join(known, on=key, how="left", suffix="_dest", maintain_order="left")
    same = pl.col(FP + "_dest").is_not_null() & (pl.col(FP) == pl.col(FP + "_dest"))
    if carried is not None:
        same = same & (pl.col(ROW) == pl.col(ROW + "_dest")).fill_null(False)
    return joined.select(same.fill_null(False).alias("same")).get_column("same").not_()


@dataclass(frozen=True)
class RunSettings:
    """What a keyed run is asked to do, and the config its outputs are made under."""

    options: KeyedOptions
    text_column: str
    prefix: str
    config_hash: str
    models: dict[str, str]


class NewTexts:
    """The distinct texts no output exists for yet, written to a scratch Parquet file for the
    model (each once); rows of a text already written there are deduplicated."""

    def __init__(self, path: Path, text_column: str, fp_column: str, reusable: pl.Series):
        self.path = path
        self.text_column = text_column
        self.schema = pa.schema([(text_column, pa.large_string()), (fp_column, FINGERPRINT_TYPE)])
        self.writer = pq.ParquetWriter(path, self.schema)
        self.reusable = reusable.implode()
        self.has_reusable = len(reusable) > 0
        self.seen: set[bytes] = set()

    def take(self, item: FilePlan, batch: pa.RecordBatch, fps: pa.Array, need: pl.Series) -> None:
        """Count the `need`ed rows of `batch` as reused, inferred or deduplicated, and write
        the texts to infer."""
        series = fingerprint_series(fps)
        if self.has_reusable:
            found = series.is_in(self.reusable)
        else:
            found = pl.Series([False] * batch.num_rows)
        item.reused += int((need & found).sum())
        values = series.to_list()
        new_rows = []
        for i in np.flatnonzero((need & ~found).to_numpy()):
            if values[i] in self.seen:
                item.deduplicated += 1
                continue
            self.seen.add(values[i])
            item.inferred += 1
            new_rows.append(int(i))
        if new_rows:
            picked = pa.array(new_rows)
            text = batch.column(self.text_column).take(picked)
            if pa.types.is_dictionary(text.type):
                text = text.dictionary_decode()
            columns = [pc.cast(text, pa.large_string()), fps.take(picked)]
            self.writer.write_batch(pa.record_batch(columns, schema=self.schema))

    def close(self) -> Path | None:
        self.writer.close()
        return self.path if self.seen else None


@dataclass
class DestState:
    """What DEST holds: its last keyed record, its rows, its output files."""

    previous: KeyedRecord | None
    reuse: bool
    rows: pl.DataFrame
    outputs: set[str]
    carried: list[str] | None
    #: `rows`, one per key: what a table's rows are compared with.
    by_key: pl.DataFrame

    def unchanged(self, item: FilePlan) -> bool:
        """Whether a folder's output of this input file is as the last keyed run wrote it."""
        previous = self.previous
        return bool(
            self.reuse
            and previous is not None
            and any(f == item.fingerprint for f in previous.inputs)
            and previous.outputs.get(item.fingerprint.relative) == item.output
            and item.output in self.outputs
        )


def previous_record(dest: Destination) -> KeyedRecord | None:
    """The last keyed commit's record in DEST (None: none, or not a keyed record)."""
    files_dest = dest.capabilities.files
    return KeyedRecord.parse(dest.read_record(RECORD_NAME) if files_dest else dest.last_record())


def read_dest_state(
    dest: Destination,
    settings: RunSettings,
    listed: list[tuple[SourceFile, FileFingerprint, pa.Schema]],
    key_types: dict[str, pa.DataType],
) -> DestState:
    options = settings.options
    key = list(options.key)
    files_dest = dest.capabilities.files
    previous = previous_record(dest)
    reuse = previous is not None and previous.same_outputs(
        key, options.output_columns, settings.config_hash
    )
    # a table's rows are compared whole (their carried columns); a folder's by input file
    carried = None
    if not files_dest and options.output_columns == "all":
        carried = carried_columns(listed[0][2], options, settings.text_column)
    outputs = dest.existing_outputs() if files_dest else []
    rows = read_dest_rows(
        dest,
        outputs,
        key,
        key_types,
        fingerprint_column(settings.prefix),
        error_column(settings.prefix),
        settings.text_column,
        carried,
    )
    relative = {dest.relative(o) for o in outputs}
    return DestState(previous, reuse, rows, relative, carried, latest_by_key(rows, key))


def plan_keyed(
    listed: list[tuple[SourceFile, FileFingerprint, pa.Schema]],
    dest: Destination,
    source: object,
    settings: RunSettings,
    scratch: Path,
    batch_rows: int = 16384,
) -> KeyedPlan:
    """Decide the run (see the module's docstring); SOURCE's keys are checked first (null or
    repeated keys: one line, before any model work)."""
    options = settings.options
    key = list(options.key)
    check_source_keys(listed, key)
    key_types = key_types_of([schema for _, _, schema in listed], key)
    state = read_dest_state(dest, settings, listed, key_types)
    reusable = (
        state.rows.filter(pl.col(OK)).get_column(FP).unique()
        if state.reuse
        else pl.Series(FP, [], pl.Binary)
    )
    fp_column = fingerprint_column(settings.prefix)
    new = NewTexts(scratch / "to_infer.parquet", settings.text_column, fp_column, reusable)
    key_parts: list[pl.DataFrame] = []
    plans: list[FilePlan] = []
    files_dest = dest.capabilities.files
    try:
        for file, fingerprint, _ in listed:
            item = FilePlan(file, fingerprint)
            if files_dest:
                item.target = dest.output_target(file, source)
                item.output = dest.relative(item.target)
                item.write = not state.unchanged(item)
            for batch, fps in batches_with_fingerprints(file, settings.text_column, batch_rows):
                item.rows += batch.num_rows
                key_parts.append(
                    _frame({name: batch.column(name).cast(key_types[name]) for name in key})
                )
                if not item.write:
                    item.reused += batch.num_rows
                    continue
                if files_dest or not state.reuse:
                    need = pl.Series([True] * batch.num_rows)
                else:
                    need = changed_rows(batch, fps, state.by_key, key, key_types, state.carried)
                needed = int(need.sum())
                item.written += needed
                item.reused += batch.num_rows - needed  # a table's unchanged rows stay
                if needed:
                    new.take(item, batch, fps, need)
            plans.append(item)
    finally:
        to_infer = new.close()
    source_keys = pl.concat(key_parts) if key_parts else _empty_dest(key_types).select(key)
    gone = state.rows.select(key).unique().join(source_keys, on=key, how="anti")
    plan = KeyedPlan(
        options,
        settings.text_column,
        fp_column,
        error_column(settings.prefix),
        settings.config_hash,
        settings.models,
        state.previous,
        state.reuse,
        plans,
        state.by_key,
        to_infer,
        gone.head(0) if options.keep_deleted else gone,
        source_keys,
    )
    if state.reuse and state.previous is not None:
        plan.embedding_ranges = dict(state.previous.embedding_ranges)
    if files_dest:
        _orphans(plan, dest, state)
    return plan


def _orphans(plan: KeyedPlan, dest: Destination, state: DestState) -> None:
    """A folder's outputs of inputs gone from SOURCE: removed; with `--keep-deleted`, kept,
    rewritten without the keys SOURCE now has elsewhere."""
    key = list(plan.options.key)
    current = {item.output for item in plan.files}
    moved = set(state.rows.join(plan.source_keys, on=key, how="semi").get_column(OUTPUT).to_list())
    for relative in sorted(state.outputs - current):
        if not plan.options.keep_deleted:
            plan.orphans.append(dest.file_path(relative))
        elif relative in moved:
            plan.orphan_rewrites.append(dest.file_path(relative))
