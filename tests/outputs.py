"""Helpers that compare enriched outputs with a clean reference run."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def vectors(table: pa.Table) -> np.ndarray:
    """Embeddings as a matrix, NaN rows where the embedding is null."""
    column = table.column("embedding")
    width = column.type.list_size
    return np.array(
        [v if v is not None else [np.nan] * width for v in column.to_pylist()], dtype=float
    )


def same_data_files(dest: Path, reference: Path) -> list[Path]:
    """The data files under `reference` (relative paths), asserting that `dest` holds exactly
    those (hidden and `_` files skipped, as readers do)."""
    ref_files = sorted(p.relative_to(reference) for p in reference.rglob("*.parquet"))
    out_files = sorted(
        p.relative_to(dest)
        for p in dest.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(dest).parts)
    )
    assert out_files == ref_files
    return ref_files


def assert_same_output(dest: Path, reference: Path) -> int:
    """Every data file under `reference` has an equal file under `dest` (embeddings to
    float rounding); no other data files exist. Returns the rows compared."""
    ref_files = same_data_files(dest, reference)
    rows = 0
    for relative in ref_files:
        expected, actual = pq.read_table(reference / relative), pq.read_table(dest / relative)
        assert actual.schema.equals(expected.schema)
        assert actual.drop_columns(["embedding"]).equals(expected.drop_columns(["embedding"]))
        np.testing.assert_allclose(vectors(actual), vectors(expected), atol=1e-5)
        rows += actual.num_rows
    return rows


#: Added float columns that may differ in the last bits when batches are cut differently
#: (and the same columns of named heads: `NAME_score`, `NAME_scores`).
FLOAT_OUTPUTS = ("score", "scores")


def assert_equivalent(dest: Path, reference: Path, min_cosine: float = 0.9999) -> int:
    """Same data files as `reference`, each with the same schema, rows in the same order,
    equal original columns, labels and errors; embeddings with cosine >= `min_cosine` and
    scores within 1e-5 (batches cut differently change the last bits). Returns the rows."""
    ref_files = same_data_files(dest, reference)
    rows = 0
    for relative in ref_files:
        expected, actual = pq.read_table(reference / relative), pq.read_table(dest / relative)
        assert actual.schema.equals(expected.schema, check_metadata=True), relative
        for name in expected.column_names:
            if name == "embedding":
                a, b = vectors(actual), vectors(expected)
                assert (np.isnan(a[:, 0]) == np.isnan(b[:, 0])).all(), relative
                ok = ~np.isnan(b[:, 0])
                cosine = (a[ok] * b[ok]).sum(1) / (
                    np.linalg.norm(a[ok], axis=1) * np.linalg.norm(b[ok], axis=1)
                )
                assert cosine.min() >= min_cosine, (relative, float(cosine.min()))
            elif name in FLOAT_OUTPUTS or name.endswith(tuple(f"_{f}" for f in FLOAT_OUTPUTS)):
                got, want = actual.column(name), expected.column(name)
                assert got.null_count == want.null_count, (relative, name)
                np.testing.assert_allclose(
                    np.array(got.to_pylist(), dtype=float),
                    np.array(want.to_pylist(), dtype=float),
                    atol=1e-5,
                )
            elif name.endswith("entities"):  # spans and labels exact, scores within 1e-5
                got, want = actual.column(name).to_pylist(), expected.column(name).to_pylist()
                assert [None if r is None else [{**e, "score": 0} for e in r] for r in got] == [
                    None if r is None else [{**e, "score": 0} for e in r] for r in want
                ], (relative, name)
                np.testing.assert_allclose(
                    [s for r in got for s in (e["score"] for e in r or [])],
                    [s for r in want for s in (e["score"] for e in r or [])],
                    atol=1e-5,
                )
            else:
                assert actual.column(name).equals(expected.column(name)), (relative, name)
        rows += actual.num_rows
    return rows


def edit_rows(path: Path, rows: list[int]) -> None:
    table = pq.read_table(path)
    texts = table.column("text").to_pylist()
    for row in rows:
        texts[row] = f"edited text for row {row}"
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts))
    pq.write_table(table, path, row_group_size=10)


def data_files(dest: Path) -> dict[str, tuple[int, int]]:
    """Inode and mtime of each committed data file (a rewrite changes them)."""
    return {
        str(p.relative_to(dest)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in dest.rglob("*.parquet")
        if not any(part.startswith(".") for part in p.relative_to(dest).parts)
    }


def staging_is_empty(dest: Path) -> bool:
    """No staged partition left beside DEST (the staging folder is gone or empty)."""
    from bertetl.io.commit import staging_root

    root = staging_root(dest)
    return not root.exists() or not any(root.iterdir())


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`, hidden ones too, links not followed: a file's SHA-256, a
    link's target, or 'dir'."""
    found: dict[str, str] = {}
    for here, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(here) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found
