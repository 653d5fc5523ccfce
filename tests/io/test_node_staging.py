"""`bertetl.io.stores.node_staging` and an object-store DEST's `node_staging`: what workers on
nodes that share no disk write under `DEST/.bertetl-staging/`, read back whole, copied into
place at commit, and removed when the run ends or by the next run after a kill.

References: each store's own SDK (`tests.io.stores.Store`) for what is on the store, the
tables written for what is read back, the local file's bytes for a fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.errors import ExecutorError
from bertetl.io.destinations import as_destination
from bertetl.io.manifest import fingerprint_output
from bertetl.io.stores.node_staging import (
    NODE_STAGING,
    listing,
    read_ipc,
    read_text,
    write_ipc,
    write_whole,
)
from bertetl.io.stores.objects import copy_object

TABLE = pa.table({"id": pa.array([3, 1, 2], pa.int64()), "text": ["c", "a", "b"]})


def test_parts_and_records_round_trip_on_a_store_and_locally(store, tmp_path: Path) -> None:
    for folder in (store.location("t/.bertetl-staging/run/ray-parts"), tmp_path / "parts"):
        write_ipc(TABLE, folder / "0" / "000000000000-1-0-0.arrow")
        write_whole(folder / "errors" / "0.permanent.x.txt", b"bad file")
        assert read_ipc(folder / "0" / "000000000000-1-0-0.arrow").equals(TABLE)
        assert read_text(folder / "errors" / "0.permanent.x.txt") == "bad file"
        names = [name for name, _ in listing(folder)]
        assert names == ["0/000000000000-1-0-0.arrow", "errors/0.permanent.x.txt"]
        assert listing(folder / "missing") == []
    assert sorted(store.objects("t")) == [
        ".bertetl-staging/run/ray-parts/0/000000000000-1-0-0.arrow",
        ".bertetl-staging/run/ray-parts/errors/0.permanent.x.txt",
    ]


def test_a_runs_prefix_goes_with_it_and_a_killed_runs_with_the_next_clean(store) -> None:
    """On exit a run's prefix is deleted; a killed run's (its context never left) is deleted
    by the next run's `clean_leftovers`, and nothing of DEST's own is touched."""
    dest = as_destination(store.location("t"))
    assert dest.capabilities.every_node
    store.put("t/date=1/part-0.parquet", b"output")
    with dest.node_staging() as staged:
        write_whole(staged / "ray-parts" / "a.arrow", b"part")
        assert staged.is_relative_to(store.location(f"t/{NODE_STAGING}"))
    assert sorted(store.objects("t")) == ["date=1/part-0.parquet"]
    killed = dest.node_staging()
    staged = killed.__enter__()  # a run killed here never leaves its context
    write_whole(staged / "ray-parts" / "a.arrow", b"part")
    write_whole(staged / "date=1" / "part-0.parquet", b"staged output")
    assert dest.clean_leftovers() >= 2
    assert sorted(store.objects("t")) == ["date=1/part-0.parquet"]


def test_an_output_staged_on_the_store_is_copied_whole_and_fingerprinted(
    store, tmp_path: Path
) -> None:
    local = tmp_path / "part-0.parquet"
    pq.write_table(TABLE, local)
    staged = store.location("t/.bertetl-staging/run/date=1/part-0.parquet")
    write_whole(staged, local.read_bytes())
    found = fingerprint_output(staged, "part-0.parquet")
    assert found.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    assert (found.size, found.rows) == (local.stat().st_size, 3)
    copy_object(staged, store.location("t/date=1/part-0.parquet"))
    assert store.get("t/date=1/part-0.parquet") == local.read_bytes()


def test_a_dest_staged_on_the_drivers_machine_refuses_node_staging(tmp_path: Path) -> None:
    dest = as_destination(tmp_path / "dest")
    assert not dest.capabilities.every_node
    with pytest.raises(ExecutorError, match=r"other nodes cannot reach"):
        dest.node_staging()
