"""A PostgreSQL table with pgvector as DEST (`postgresql://USER@HOST:PORT/DB?table=T`): a run
is merged by key (`--key`; a whole table is never replaced), each partition or run in ONE
transaction: rows COPY'd (binary) into a temporary table, upserted (`INSERT ... ON CONFLICT
(key) DO UPDATE`), deleted keys removed, and bertetl's manifest written to `bertetl_runs` in the
same transaction. The one-run lock is a session advisory lock (the server drops it when the
holder's connection dies, SIGKILL included). The table is created when missing, its vectors as
`vector(N)` (`halfvec(N)` for float16), with `--index hnsw` an HNSW index (cosine)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.errors import CommitError, InputError
from bertetl.io.destinations.base import (
    Capabilities,
    Destination,
    PlacedDestination,
    staged_rows,
)
from bertetl.io.manifest import Manifest, OutputDamage
from bertetl.io.partitions import Partition
from bertetl.io.stores.locations import Location, StorageError
from bertetl.io.stores.postgres import (
    RUNS_TABLE,
    AdvisoryLock,
    PostgresRef,
    connect,
    copy_rows,
    first_line,
    quote,
    register_vector,
    sql_type,
    to_arrow,
)

log = logging.getLogger(__name__)

#: The advisory locks this context holds (`holding`), by table.
_HELD: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "bertetl_held_pg_locks", default=()
)
#: Rows fetched per batch by `keyed_rows`.
FETCH_ROWS = 10_000


class PostgresTable(PlacedDestination):
    """A table in PostgreSQL with pgvector (`place`: a `PostgresRef`)."""

    kind = "postgresql"
    capabilities = Capabilities(
        commit="transaction",
        files=False,
        object_storage=False,
        every_node=True,
        merge_by_key=True,
        requires_key=True,
        indexes=("hnsw",),
    )
    place: PostgresRef

    @classmethod
    def accepts(cls, place: object) -> bool:
        return isinstance(place, PostgresRef)

    @property
    def uri(self) -> str:
        return self.place.uri

    # -- lock, staging, checks ---------------------------------------------------------------

    def lock(self) -> Any:
        from bertetl.io.commit import HeldLock

        return HeldLock() if self.uri in _HELD.get() else AdvisoryLock(self.place)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        lock = self.lock()
        lock.acquire()
        token = _HELD.set((*_HELD.get(), self.uri))
        try:
            yield
        finally:
            _HELD.reset(token)
            lock.release()

    def _staging_key(self) -> Location:
        name = f"postgresql/{self.place.schema}.{self.place.table}"
        return Location(name, name)

    def staging(self) -> contextlib.AbstractContextManager[Path]:
        from bertetl.io.stores.objects import local_staged_folder

        return local_staged_folder(self._staging_key())

    def clean_leftovers(self, only_file: str | None = None) -> int:
        from bertetl.io.stores.objects import clean_local_staging

        return clean_local_staging(self._staging_key())

    def check(self) -> None:
        """The database answers (a one-line `StorageError`, password masked, otherwise)."""
        with connect(self.place) as connection:
            connection.execute("SELECT 1")

    def root_for(self, source: object) -> tuple[Destination, str | None]:
        return self, None

    def output_target(self, file: Any, source: object) -> Any:
        raise NotImplementedError(f"{self.uri}: a table is written by a staged run")

    def check_outputs_replaceable(self, targets: list[Any]) -> None:
        """A commit replaces only its own rows: nothing to refuse by path."""

    def partition_target(self, partition: Partition) -> Any:
        return self.place

    def check_foreign(self, partitions: list[Partition]) -> dict[str, frozenset[str]]:
        """Refuse a table that holds rows and no commit of bertetl's (unless
        `overwrite_foreign`)."""
        if self._exists() and self.last_record() is None and self._holds_rows():
            if not self.overwrite_foreign:
                raise InputError(
                    f"DEST {self.uri} is a table bertetl did not write (it holds rows and no "
                    f"commit in {RUNS_TABLE}); pick a new table, or pass --overwrite-foreign"
                )
            log.warning("%s is a table bertetl did not write; written, as asked", self.uri)
        return {partition.value: frozenset() for partition in partitions}

    def check_replace_all(self) -> None:
        raise InputError(
            f"DEST {self.uri} needs --key COL[,COL...]: rows are upserted by key into "
            "PostgreSQL (a whole table is never replaced)"
        )

    def replace_all(self, staged: Path, files: list[Path], rows: int, record: str) -> None:
        self.check_replace_all()

    # -- commits -------------------------------------------------------------------------------

    def commit_partition(
        self,
        target: Any,
        staged: Path,
        manifest: Manifest,
        owned: frozenset[str],
        files: list[Path],
    ) -> Manifest:
        """ONE transaction: the partition's rows deleted, the staged rows COPY'd in (the
        partition column added), the manifest into `bertetl_runs`."""
        partition = Partition(manifest.partition_column, manifest.partition, "", ())
        rows = staged_rows(files, partition)
        manifest.outputs, manifest.output_files = [], []
        with self._transaction() as cursor:
            self._ensure_table(cursor, rows.schema, [])
            cursor.execute(
                f"DELETE FROM {self.place.qualified} WHERE {self._partition_sql(partition)}",
                self._partition_args(partition),
            )
            copy_rows(cursor, self.place.qualified, rows.schema, iter(rows.to_batches()))
            self._record(cursor, manifest.model_dump_json(), partition)
        return manifest

    def merge_keyed(
        self,
        upserts: list[Path],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
        partition: Partition | None = None,
    ) -> bool:
        """ONE transaction: the staged rows COPY'd into a temporary table and upserted by
        `key`, the `deletes` keys removed (with `partition`: only its rows), `record` into
        `bertetl_runs`."""
        rows = staged_rows(upserts, partition)
        if not rows.num_rows and (deletes is None or not deletes.num_rows):
            return False
        table = self.place.qualified
        with self._transaction() as cursor:
            if rows.num_columns:
                self._ensure_table(cursor, rows.schema, key)
            elif not self._exists(cursor):
                return False
            self._ensure_unique(cursor, key)
            scope = f" AND t.{self._partition_sql(partition)}" if partition else ""
            args = self._partition_args(partition) if partition else ()
            if rows.num_rows:
                names = [quote(n) for n in rows.column_names]
                cursor.execute(
                    f"CREATE TEMP TABLE _bertetl_upserts ON COMMIT DROP AS "
                    f"SELECT {', '.join(names)} FROM {table} WITH NO DATA"
                )
                copy_rows(cursor, "_bertetl_upserts", rows.schema, iter(rows.to_batches()))
                updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n not in key) or (
                    f"{quote(key[0])} = EXCLUDED.{quote(key[0])}"
                )
                cursor.execute(
                    f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(names)} "
                    f"FROM _bertetl_upserts ON CONFLICT ({', '.join(map(quote, key))}) "
                    f"DO UPDATE SET {updates}"
                )
            if deletes is not None and deletes.num_rows:
                keys = deletes.select(key)
                cursor.execute(
                    f"CREATE TEMP TABLE _bertetl_deletes ON COMMIT DROP AS "
                    f"SELECT {', '.join(map(quote, key))} FROM {table} WITH NO DATA"
                )
                copy_rows(cursor, "_bertetl_deletes", keys.schema, iter(keys.to_batches()))
                match = " AND ".join(f"t.{quote(k)} = d.{quote(k)}" for k in key)
                cursor.execute(
                    f"DELETE FROM {table} t USING _bertetl_deletes d WHERE {match}{scope}", args
                )
            self._record(cursor, record, partition)
        return True

    def keyed_rows(self, key: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
        with connect(self.place) as connection:
            if not self._exists(connection.cursor()):
                return
            present = self._columns(connection.cursor())
            names = [*key, *(c for c in columns if c in present and c not in key)]
            with connection.cursor(name="bertetl_keyed_rows") as cursor:
                cursor.execute(f"SELECT {', '.join(map(quote, names))} FROM {self.place.qualified}")
                while fetched := cursor.fetchmany(FETCH_ROWS):
                    yield to_arrow(names, fetched)

    def last_record(self) -> str | None:
        found = self._records(None, limit=1)
        return found[0][1] if found else None

    # -- manifests and verification ------------------------------------------------------------

    def committed_manifests(self, column: str | None = None) -> dict[str, tuple[Any, Manifest]]:
        """The newest manifest of each partition, from `bertetl_runs`."""
        found: dict[str, tuple[Any, Manifest]] = {}
        for commit_id, text in self._records(column):
            manifest = Manifest.model_validate_json(text)
            if manifest.partition_column == column or column is None:
                found.setdefault(manifest.partition, (commit_id, manifest))
        return found

    def verify(self, where: Any, manifest: Manifest) -> list[OutputDamage]:
        """The partition's rows in the table now add up to what its commit wrote."""
        partition = Partition(manifest.partition_column, manifest.partition, "", ())
        with connect(self.place) as connection:
            counted = connection.execute(
                f"SELECT count(*) FROM {self.place.qualified} "
                f"WHERE {self._partition_sql(partition)}",
                self._partition_args(partition),
            ).fetchone()[0]
        if counted != manifest.rows_out:
            return [
                OutputDamage("", f"holds {counted:,} rows, the manifest says {manifest.rows_out:,}")
            ]
        return []

    def earlier_outputs(
        self,
        target: Any,
        partition: Partition,
        outputs: list[str],
        damaged: bool,
        fields: list[pa.Field],
        scratch: Path,
    ) -> list[Any]:
        """The partition's rows in the table now (`fields`, converted back to their types),
        read into a local Parquet file for row reuse; none when damaged or unreadable."""
        if damaged:
            return []
        names = [f.name for f in fields]
        with connect(self.place) as connection:
            if not set(names) <= self._columns(connection.cursor()):
                return []
            fetched = connection.execute(
                f"SELECT {', '.join(map(quote, names))} FROM {self.place.qualified} "
                f"WHERE {self._partition_sql(partition)}",
                self._partition_args(partition),
            ).fetchall()
        path = scratch / "earlier.parquet"
        try:
            batch = to_arrow(names, fetched)
            schema = pa.schema(fields)
            columns = [batch.column(i).cast(f.type) for i, f in enumerate(fields)]
            pq.write_table(pa.Table.from_arrays(columns, schema=schema), path)
        except (pa.ArrowException, ValueError) as e:
            log.warning("%s %s: earlier rows not reused: %s", self.uri, partition.value, e)
            return []
        return [path]

    def committed_outputs(self) -> tuple[list[Any], list[Any]]:
        raise NotImplementedError(f"{self.uri}: a table's rows are read from the table")

    @property
    def shown_root(self) -> Any:
        return None

    def relative(self, folder: Any) -> str:
        raise NotImplementedError(f"{self.uri}: a table has no folders")

    def file_path(self, relative: str) -> Any:
        return None

    def overlaps(self, source: object) -> bool:
        return False  # a SOURCE is never a PostgreSQL table

    # -- SQL -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor in ONE transaction, committed on success; errors as `CommitError`s with
        the password masked."""
        import psycopg

        with connect(self.place) as connection:
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    yield cursor
            except psycopg.Error as e:
                raise CommitError(f"{self.uri}: {self.place.masked(first_line(e))}") from e

    def _exists(self, cursor: Any = None) -> bool:
        if cursor is None:
            with connect(self.place) as connection:
                return self._exists(connection.cursor())
        found = cursor.execute("SELECT to_regclass(%s)", (self.place.qualified,)).fetchone()[0]
        return found is not None

    def _holds_rows(self) -> bool:
        with connect(self.place) as connection:
            row = connection.execute(f"SELECT 1 FROM {self.place.qualified} LIMIT 1").fetchone()
        return row is not None

    def _columns(self, cursor: Any) -> set[str]:
        rows = cursor.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (self.place.schema, self.place.table),
        ).fetchall()
        return {r[0] for r in rows}

    def _ensure_table(self, cursor: Any, schema: pa.Schema, key: list[str]) -> None:
        """The vector extension, `bertetl_runs`, and the table (created from `schema`, the
        key as its primary key) with the columns of `schema` it lacks; the index asked for."""
        if any(sql_type(f.type).startswith(("vector(", "halfvec(")) for f in schema):
            self._ensure_vector(cursor)
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {self.place.runs} (id bigserial PRIMARY KEY, "
            "table_name text NOT NULL, partition_column text, partition text, "
            "record text NOT NULL, committed_at timestamptz NOT NULL DEFAULT now())"
        )
        columns = ", ".join(f"{quote(f.name)} {sql_type(f.type)}" for f in schema)
        primary = f", PRIMARY KEY ({', '.join(map(quote, key))})" if key else ""
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {self.place.qualified} ({columns}{primary})")
        present = self._columns(cursor)
        for field in schema:
            if field.name not in present:
                cursor.execute(
                    f"ALTER TABLE {self.place.qualified} ADD COLUMN {quote(field.name)} "
                    f"{sql_type(field.type)}"
                )
        self._ensure_index(cursor, schema)

    def _ensure_vector(self, cursor: Any) -> None:
        import psycopg

        if cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            return
        try:
            with cursor.connection.transaction():
                cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as e:
            raise StorageError(
                f"{self.uri}: the pgvector extension is not installed and this user may not "
                "install it: a superuser or the database owner must run CREATE EXTENSION vector "
                f"({self.place.masked(first_line(e))})"
            ) from e
        register_vector(cursor.connection)  # cursors made from now on know its types

    def _ensure_index(self, cursor: Any, schema: pa.Schema) -> None:
        """`--index hnsw` (cosine) on the index's column, created when missing; PostgreSQL
        keeps it up to date on every insert."""
        spec = self.index
        if spec is None or spec.column not in schema.names:
            return
        half = "halfvec" in sql_type(schema.field(spec.column).type)
        metric = {"cosine": "cosine", "l2": "l2", "dot": "ip"}[spec.metric]
        ops = f"{'halfvec' if half else 'vector'}_{metric}_ops"
        params = ", ".join(f"{k} = {int(v)}" for k, v in spec.params.items())
        name = quote(f"{self.place.table}_{spec.column}_hnsw")
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {self.place.qualified} "
            f"USING hnsw ({quote(spec.column)} {ops})" + (f" WITH ({params})" if params else "")
        )

    def _ensure_unique(self, cursor: Any, key: list[str]) -> None:
        """A unique index on `key` (what ON CONFLICT needs) when the table has none."""
        name = quote(f"{self.place.table}_bertetl_key")
        cursor.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {self.place.qualified} "
            f"({', '.join(map(quote, key))})"
        )

    def _record(self, cursor: Any, record: str, partition: Partition | None) -> None:
        cursor.execute(
            f"INSERT INTO {self.place.runs} (table_name, partition_column, partition, record) "
            "VALUES (%s, %s, %s, %s)",
            (
                self.place.table,
                None if partition is None else partition.column,
                None if partition is None else partition.value,
                record,
            ),
        )

    def _records(self, column: str | None, limit: int | None = None) -> list[tuple[int, str]]:
        """(id, record) of bertetl's commits to the table, newest first (with `column`: of
        its partitions)."""
        with connect(self.place) as connection:
            if (
                connection.execute("SELECT to_regclass(%s)", (self.place.runs,)).fetchone()[0]
                is None
            ):
                return []
            where = " AND partition_column = %s" if column else ""
            args: tuple[Any, ...] = (self.place.table, column) if column else (self.place.table,)
            rows = connection.execute(
                f"SELECT id, record FROM {self.place.runs} WHERE table_name = %s{where} "
                "ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else ""),
                args,
            ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def _partition_sql(self, partition: Partition | None) -> str:
        from bertetl.io.tables.base import NULL_PARTITION

        assert partition is not None
        if partition.value == NULL_PARTITION:
            return f"{quote(partition.column)} IS NULL"
        return f"{quote(partition.column)} = %s"

    def _partition_args(self, partition: Partition | None) -> tuple[Any, ...]:
        from bertetl.io.tables.base import NULL_PARTITION

        if partition is None or partition.value == NULL_PARTITION:
            return ()
        return (partition.value,)
