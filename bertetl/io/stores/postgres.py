"""PostgreSQL with pgvector as DEST: `postgresql://USER@HOST:PORT/DB?table=[SCHEMA.]TABLE`.

`parse_postgres` turns the URI into a `PostgresRef`: the connection string without `table`
(credentials from it, or from libpq's environment, `PGPASSWORD`, and `.pgpass`, as libpq finds
them) and the table. A password is never shown: `uri` masks it, and `masked` masks it in any
message (every error a connection or statement raises goes through it). `psycopg` 3 and
`pgvector` come with the `postgres` extra.

Rows go in by COPY (binary) from Arrow batches; a vector column (a fixed-size list of floats)
becomes `vector(N)`, of float16 `halfvec(N)`. See docs/VECTOR_STORES.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from bertetl.errors import CommitError
from bertetl.io.stores.locations import StorageError
from bertetl.io.stores.pgref import (
    POSTGRES_SCHEMES,
    RUNS_TABLE,
    PostgresRef,
    is_postgres_uri,
    mask_password,
    parse_postgres,
    quote,
)

__all__ = [
    "POSTGRES_SCHEMES",
    "RUNS_TABLE",
    "AdvisoryLock",
    "PostgresRef",
    "connect",
    "copy_rows",
    "is_postgres_uri",
    "mask_password",
    "parse_postgres",
    "quote",
    "sql_type",
    "to_arrow",
]


def connect(ref: PostgresRef, autocommit: bool = False) -> Any:
    """A connection to `ref`'s database (a one-line `StorageError`, password masked, when
    there is none); pgvector's types registered when the extension is there."""
    try:
        import psycopg
    except ImportError as e:
        raise StorageError(f"{ref.uri} needs psycopg: pip install 'bertetl[postgres]' ({e})") from e
    try:
        connection = psycopg.connect(ref.conninfo, autocommit=autocommit)
    except psycopg.Error as e:
        raise StorageError(f"cannot connect to {ref.uri}: {ref.masked(first_line(e))}") from e
    register_vector(connection)
    return connection


class AdvisoryLock:
    """DEST's one-run lock: `pg_try_advisory_lock` on a key of the table's name, held by a
    connection of its own for the run (released when it closes, or dies)."""

    def __init__(self, ref: PostgresRef) -> None:
        self.ref = ref
        self._connection: Any = None

    @property
    def key(self) -> int:
        digest = hashlib.sha256(f"bertetl:{self.ref.qualified}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def acquire(self) -> None:
        connection = connect(self.ref, autocommit=True)
        taken = connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
        if not taken:
            connection.close()
            raise CommitError(
                f"another bertetl run is writing {self.ref.uri} (it holds the table's advisory "
                "lock); wait for it to finish, or pick another DEST"
            )
        self._connection = connection

    def release(self) -> None:
        if self._connection is not None:
            try:  # unlocked now: a closed connection's backend may hold it a moment longer
                self._connection.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            finally:
                self._connection.close()  # the session's advisory locks go with it anyway
                self._connection = None

    def __enter__(self) -> AdvisoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def register_vector(connection: Any) -> bool:
    """pgvector's types on `connection`; False when the extension is not installed yet."""
    from pgvector.psycopg import register_vector as register

    try:
        register(connection)
    except Exception as e:  # psycopg.ProgrammingError: "vector type not found in the database"
        if "not found" not in str(e):
            raise
        return False
    return True


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- Arrow <-> PostgreSQL -------------------------------------------------------------------

_SCALARS = {
    pa.string(): "text",
    pa.large_string(): "text",
    pa.int8(): "smallint",
    pa.int16(): "smallint",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.float16(): "real",
    pa.float32(): "real",
    pa.float64(): "double precision",
    pa.bool_(): "boolean",
    pa.date32(): "date",
}


def sql_type(data_type: pa.DataType) -> str:
    """The column type a field gets: `vector(N)` for a fixed-size list of float32/64,
    `halfvec(N)` of float16; lists become arrays; what has no type here is `text`."""
    if pa.types.is_fixed_size_list(data_type) and pa.types.is_floating(data_type.value_type):
        kind = "halfvec" if pa.types.is_float16(data_type.value_type) else "vector"
        return f"{kind}({data_type.list_size})"
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return sql_type(data_type.value_type) + "[]"
    if pa.types.is_timestamp(data_type):
        return "timestamptz" if data_type.tz else "timestamp"
    if (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
    ):
        return "bytea"  # a keyed run's text fingerprints, bytes as they are
    return _SCALARS.get(data_type, "text")


def column_values(column: pa.Array) -> list[Any]:
    """A column's values for COPY: vectors as NumPy arrays (pgvector's dumpers), the rest as
    Python values (`text` columns of types with no SQL type here as their string)."""
    data_type = column.type
    if pa.types.is_fixed_size_list(data_type) and pa.types.is_floating(data_type.value_type):
        from pgvector import HalfVector

        flat = column.flatten().to_numpy(zero_copy_only=False)  # the valid rows' values
        rows = iter(flat.reshape(-1, data_type.list_size))
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        half = pa.types.is_float16(data_type.value_type)
        return [
            (HalfVector(next(rows)) if half else next(rows).astype(np.float32)) if ok else None
            for ok in valid
        ]
    values = column.to_pylist()
    if sql_type(data_type) == "text" and not pa.types.is_string(data_type):
        if not pa.types.is_large_string(data_type):
            return [None if v is None else str(v) for v in values]
    return values


def copy_rows(
    cursor: Any, target: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch]
) -> int:
    """COPY (binary) the batches' rows into `target` (a quoted table name), in `cursor`'s
    transaction (through a new cursor: it knows the types registered since); returns the rows."""
    names = ", ".join(quote(f.name) for f in schema)
    types = [sql_type(f.type).split("(")[0] for f in schema]
    rows = 0
    with (
        cursor.connection.cursor() as fresh,
        fresh.copy(f"COPY {target} ({names}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(types)
        for batch in batches:
            columns = [column_values(batch.column(f.name)) for f in schema]
            for row in zip(*columns, strict=True):
                copy.write_row(row)
            rows += batch.num_rows
    return rows


def to_arrow(names: list[str], rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    """Fetched rows as a record batch: vectors (NumPy arrays, pgvector's loaders) as
    fixed-size lists of float32."""
    arrays = []
    for index, _name in enumerate(names):
        values = [row[index] for row in rows]
        sample = next((v for v in values if v is not None), None)
        if sample is not None and hasattr(sample, "to_numpy"):  # HalfVector
            values = [None if v is None else v.to_numpy() for v in values]
            sample = values[0]
        if isinstance(sample, np.ndarray):
            size = len(sample)
            blank = np.zeros(size, np.float32)
            flat = np.concatenate(
                [blank if v is None else np.asarray(v, np.float32) for v in values]
            )
            mask = pa.array([v is None for v in values])
            arrays.append(
                pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), size, mask=mask)
            )
        else:
            arrays.append(pa.array(values))
    return pa.RecordBatch.from_arrays(arrays, names=names)
