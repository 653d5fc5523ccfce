"""What the keyed-run tests share: a source table that changes in place (edits, deletes,
inserts, rows moved between files), each kind of DEST read back as a user would, and a
comparison key for key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

WORDS = ["great", "awful", "fine", "slow", "quick", "loud", "calm", "bright", "dull", "warm"]


def text_of(i: int) -> str:
    return f"review {i}: {WORDS[i % len(WORDS)]} and {WORDS[(i * 7) % len(WORDS)]}"


def write_source(root: Path, rows: int = 60, files: int = 3) -> Path:
    """`root/part-K.parquet`: ids 0..rows-1 spread over `files` files, a text and a number."""
    root.mkdir(parents=True, exist_ok=True)
    share = -(-rows // files)
    for part in range(files):
        ids = list(range(part * share, min(rows, (part + 1) * share)))
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "text": pa.array([text_of(i) for i in ids], pa.string()),
                "stars": pa.array([i % 5 for i in ids], pa.int64()),
            }
        )
        pq.write_table(table, root / f"part-{part}.parquet")
    return root


def change_source(root: Path) -> dict[str, set[int]]:
    """One change of the kind CDC makes, in place: 2 texts edited, 2 rows deleted, 3 rows
    inserted (2 with the same new text), a row moved to another file, and one row's
    non-text column changed. Returns the ids of each kind of change."""
    parts = sorted(root.glob("part-*.parquet"))
    tables = [pq.read_table(p).to_pylist() for p in parts]
    edited = {tables[0][1]["id"], tables[1][2]["id"]}
    tables[0][1]["text"] = "an edited review, new words"
    tables[1][2]["text"] = "another edited review"
    deleted = {tables[0][-1]["id"], tables[2][0]["id"]}
    tables[0] = tables[0][:-1]
    tables[2] = tables[2][1:]
    moved_row = tables[1].pop(0)
    tables[2].append(moved_row)
    tables[1][4]["stars"] = 9
    inserted = {1000, 1001, 1002}
    tables[2] += [
        {"id": 1000, "text": "a brand new review", "stars": 1},
        {"id": 1001, "text": "a brand new review", "stars": 2},
        {"id": 1002, "text": "one more new review", "stars": 3},
    ]
    schema = pq.read_schema(parts[0])
    for path, rows in zip(parts, tables, strict=True):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return {
        "edited": edited,
        "deleted": deleted,
        "inserted": inserted,
        "moved": {moved_row["id"]},
        "other_column": {tables[1][4]["id"]},
    }


def read_dest(uri: str, options: dict[str, str] | None = None) -> pl.DataFrame:
    """DEST's rows as a reader sees them (a folder or prefix of Parquet files, hidden and
    `_` files skipped; a Delta or Iceberg table at its current version)."""
    options = options or {}
    if uri.startswith("delta://"):
        import deltalake

        from bertetl.io.stores.locations import resolve
        from bertetl.io.tables import delta_storage_options

        ref = resolve(uri, options)
        table = deltalake.DeltaTable(
            ref.address, storage_options=delta_storage_options(ref) or None
        ).to_pyarrow_table()
    elif uri.startswith("lance://"):
        import lance

        from bertetl.io.stores.locations import resolve
        from bertetl.io.tables import lance_storage_options

        ref = resolve(uri, options)
        storage = lance_storage_options(ref) or None
        table = lance.dataset(ref.address, storage_options=storage).to_table()
    elif uri.startswith("postgresql://"):
        from tests.runs.test_postgres import read_postgres

        return read_postgres(uri)
    elif uri.startswith("iceberg://"):
        from pyiceberg.catalog import load_catalog

        catalog, name = uri.removeprefix("iceberg://").split("/", 1)
        table = load_catalog(catalog).load_table(name).scan().to_arrow()
    elif "://" in uri:
        from bertetl.io.stores.locations import resolve

        location = resolve(uri, options)
        table = ds.dataset(location.path, filesystem=location.fs, format="parquet").to_table()
    else:
        table = ds.dataset(uri, format="parquet", partitioning="hive").to_table()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def assert_same_by_key(actual: pl.DataFrame, expected: pl.DataFrame, key: str = "id") -> None:
    """The same keys, each once; every column equal, embeddings within float error."""
    assert actual[key].n_unique() == actual.height, "a key is in DEST twice"
    assert sorted(actual[key].to_list()) == sorted(expected[key].to_list())
    actual, expected = actual.sort(key), expected.sort(key)
    assert set(actual.columns) == set(expected.columns)
    for name in expected.columns:
        if name == "embedding":
            got = np.array(actual[name].to_list(), dtype=np.float32)
            want = np.array(expected[name].to_list(), dtype=np.float32)
            assert np.allclose(got, want, atol=1e-5), "embeddings differ"
        else:
            assert actual[name].to_list() == expected[name].to_list(), name
