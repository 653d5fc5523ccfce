"""A PostgreSQL table as DEST, parsed from `postgresql://USER@HOST:PORT/DB?table=[SCHEMA.]TABLE`
(`PostgresRef`), with its password masked wherever it is shown. Imports nothing of
`bertetl.io.stores` (`locations.resolve` imports it); `bertetl.io.stores.postgres` connects."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bertetl.errors import InputError

#: URI schemes that name a PostgreSQL table.
POSTGRES_SCHEMES = ("postgresql", "postgres")
#: bertetl's manifests, one row per commit, in the table's schema.
RUNS_TABLE = "bertetl_runs"
_MASK = "***"


@dataclass(frozen=True)
class PostgresRef:
    """A PostgreSQL table as DEST: `conninfo` (libpq's URI, without `table`; it may hold a
    password: never show it), `schema` and `table`; `uri` is DEST as shown (password masked)."""

    conninfo: str
    schema: str
    table: str
    uri: str

    def __str__(self) -> str:
        return self.uri

    @property
    def qualified(self) -> str:
        """`"schema"."table"`, quoted for SQL."""
        return f"{quote(self.schema)}.{quote(self.table)}"

    @property
    def runs(self) -> str:
        return f"{quote(self.schema)}.{quote(RUNS_TABLE)}"

    def masked(self, text: object) -> str:
        """`text` with this DEST's password masked."""
        return mask_password(str(text), self.conninfo)


def is_postgres_uri(text: object) -> bool:
    return isinstance(text, str) and text.split("://", 1)[0].lower() in POSTGRES_SCHEMES


def quote(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def mask_password(text: str, conninfo: str) -> str:
    """`text` with the password of `conninfo` (in its user-info or `password=`) masked."""
    parts = urlsplit(conninfo)
    secrets = [parts.password] if parts.password else []
    secrets += [v for k, v in parse_qsl(parts.query) if k == "password" and v]
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return re.sub(r"(password=)[^&\s]+", r"\1" + _MASK, text)


def parse_postgres(text: str) -> PostgresRef:
    """`postgresql://USER@HOST:PORT/DB?table=[SCHEMA.]TABLE` as a `PostgresRef` (a
    `StorageError` naming the form when `table` is missing)."""
    parts = urlsplit(text)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tables = [v for k, v in query if k == "table"]
    conninfo = urlunsplit(
        parts._replace(query=urlencode([(k, v) for k, v in query if k != "table"]))
    )
    shown = mask_password(text, text)
    if len(tables) != 1 or not tables[0].strip():
        raise InputError(f"{shown}: expected postgresql://USER@HOST:PORT/DB?table=[SCHEMA.]TABLE")
    schema, _, table = tables[0].strip().rpartition(".")
    return PostgresRef(conninfo, schema or "public", table, shown)
