"""Lance and PostgreSQL with pgvector as DEST, through the keyed interface (`merge_keyed`,
`keyed_rows`, `last_record`) on their real engines (a local Lance dataset, a PostgreSQL 16 with
pgvector started by the test fixture), checked against a plain dict of the expected rows, and
the queries a user then runs: a row's own embedding finds that row; the ANN index's top 10
agree with an exact search (recall@10 >= 0.95 on 10,000 random unit vectors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.errors import InputError
from bertetl.io.destinations import Destination, parse_destination
from bertetl.io.destinations.base import IndexSpec, KeyedDestination
from bertetl.io.partitions import Partition
from bertetl.io.stores.locations import StorageError

pytest.importorskip("lance")
DIM = 8


def _vectors(ids: list[int], seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(len(ids), dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _stage(
    folder: Path, name: str, ids: list[int], seed: int, day: str | None = None, dim: int = DIM
) -> Path:
    """A staged Parquet file of rows as an embed run writes them."""
    columns = {
        "id": pa.array(ids, pa.int64()),
        "text": pa.array([f"text {i} v{seed}" for i in ids], pa.large_string()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(_vectors(ids, seed, dim).ravel(), pa.float32()), dim
        ),
    }
    if day is not None:
        columns["day"] = pa.array([day] * len(ids))
    path = folder / name
    pq.write_table(pa.table(columns), path)
    return path


def _rows(dest: Destination) -> dict[int, str]:
    """id -> text of the committed rows (`keyed_rows`)."""
    assert isinstance(dest, KeyedDestination)
    batches = list(dest.keyed_rows(["id"], ["text", "missing"]))
    if not batches:
        return {}
    table = pa.Table.from_batches(batches)
    assert table.column_names == ["id", "text"]  # columns that do not exist are left out
    return dict(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True))


def _versions(dest: Destination) -> int:
    """Lance versions, or bertetl_runs rows in PostgreSQL: what one commit adds one to."""
    if dest.kind == "lance":
        from bertetl.io.tables import count_commits

        return count_commits(dest.place)
    import psycopg

    with psycopg.connect(dest.place.conninfo) as connection:
        if connection.execute("SELECT to_regclass('bertetl_runs')").fetchone()[0] is None:
            return 0
        return int(
            connection.execute(
                "SELECT count(*) FROM bertetl_runs WHERE table_name = %s", (dest.place.table,)
            ).fetchone()[0]
        )


@pytest.fixture(params=["lance", "postgresql"])
def keyed(request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    if request.param == "lance":
        return parse_destination(f"lance://{tmp_path / 'dataset'}")
    return parse_destination(request.getfixturevalue("postgres_dest"))


def test_a_keyed_merge_upserts_and_deletes_in_one_commit(
    keyed: Destination, tmp_path: Path
) -> None:
    assert keyed.capabilities.merge_by_key and isinstance(keyed, KeyedDestination)
    assert list(keyed.keyed_rows(["id"], ["text"])) == [] and keyed.last_record() is None
    assert not keyed.merge_keyed([], None, ["id"], "{}")  # nothing to do: no commit

    first = _stage(tmp_path, "a.parquet", [1, 2, 3, 4], seed=1)
    assert keyed.merge_keyed([first], None, ["id"], json.dumps({"run": 1}))
    expected = {i: f"text {i} v1" for i in (1, 2, 3, 4)}
    assert _rows(keyed) == expected
    before = _versions(keyed)

    second = _stage(tmp_path, "b.parquet", [2, 5], seed=2)  # 2 updated, 5 added
    deletes = pa.table({"id": pa.array([3, 99], pa.int64())})  # 3 deleted, 99 never was
    assert keyed.merge_keyed([second], deletes, ["id"], json.dumps({"run": 2}))
    expected.update({2: "text 2 v2", 5: "text 5 v2"})
    del expected[3]
    assert _rows(keyed) == expected
    assert _versions(keyed) == before + 1  # the upsert and the delete: one commit
    assert json.loads(keyed.last_record() or "") == {"run": 2}

    only_deletes = pa.table({"id": pa.array([1], pa.int64())})
    assert keyed.merge_keyed([], only_deletes, ["id"], json.dumps({"run": 3}))
    del expected[1]
    assert _rows(keyed) == expected
    assert not keyed.merge_keyed([], pa.table({"id": pa.array([], pa.int64())}), ["id"], "{}")
    assert _versions(keyed) == before + 2  # the empty merge committed nothing


def test_a_partition_merge_touches_only_its_partition(keyed: Destination, tmp_path: Path) -> None:
    day1 = Partition("day", "d1", "day=d1", ())
    day2 = Partition("day", "d2", "day=d2", ())
    keyed.merge_keyed([_stage(tmp_path, "1.parquet", [1, 2], 1)], None, ["id"], "{}", day1)
    keyed.merge_keyed([_stage(tmp_path, "2.parquet", [3, 4], 1)], None, ["id"], "{}", day2)
    deletes = pa.table({"id": pa.array([1, 3], pa.int64())})  # 3 is day2's: kept
    keyed.merge_keyed([_stage(tmp_path, "3.parquet", [2], 2)], deletes, ["id"], "{}", day1)
    assert _rows(keyed) == {2: "text 2 v2", 3: "text 3 v1", 4: "text 4 v1"}


def test_a_rows_own_embedding_finds_that_row(keyed: Destination, tmp_path: Path) -> None:
    ids = list(range(200))
    keyed.merge_keyed([_stage(tmp_path, "a.parquet", ids, 7)], None, ["id"], "{}")
    vectors = _vectors(ids, 7)
    for row in (0, 57, 199):
        assert _nearest(keyed, vectors[row], 1) == [row]


def _nearest(dest: Destination, query: np.ndarray, k: int, exact: bool = True) -> list[int]:
    """The `k` nearest rows by cosine distance, as a user queries each store."""
    if dest.kind == "lance":
        import lance

        dataset = lance.dataset(dest.place.address)
        nearest = {"column": "embedding", "q": query, "k": k, "metric": "cosine"}
        if exact:
            nearest["use_index"] = False
        else:
            nearest["nprobes"] = 8
        return dataset.to_table(columns=["id"], nearest=nearest)["id"].to_pylist()
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(dest.place.conninfo) as connection:
        register_vector(connection)
        if exact:
            connection.execute("SET enable_indexscan = off")
        else:
            connection.execute("SET hnsw.ef_search = 100")
        rows = connection.execute(
            f"SELECT id FROM {dest.place.qualified} ORDER BY embedding <=> %s LIMIT %s",
            (query, k),
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("index", ["ivf_hnsw_sq", "hnsw"])
def test_the_ann_index_agrees_with_exact_search(index: str, request, tmp_path: Path) -> None:
    """recall@10 of the index against an exact search, on 10,000 random unit vectors of 32
    dimensions (random rather than enriched rows: a model run of 10,000 rows is too slow for
    this 2-core machine), 50 queries."""
    if index == "hnsw":
        dest = parse_destination(request.getfixturevalue("postgres_dest"))
        dest.index = IndexSpec(kind="hnsw", params={"m": 16, "ef_construction": 64})
    else:
        dest = parse_destination(f"lance://{tmp_path / 'dataset'}")
        dest.index = IndexSpec(kind=index, params={"num_partitions": 8})
    ids = list(range(10_000))
    staged = _stage(tmp_path, "a.parquet", ids, 3, dim=32)
    assert dest.merge_keyed([staged], None, ["id"], "{}")
    queries = _vectors(list(range(50)), 11, dim=32)
    assert _index_names(dest)  # built after the commit
    hits = 0
    for query in queries:
        exact = set(_nearest(dest, query, 10))
        approximate = set(_nearest(dest, query, 10, exact=False))
        hits += len(exact & approximate)
    assert hits / (10 * len(queries)) >= 0.95


def _index_names(dest: Destination) -> list[str]:
    if dest.kind == "lance":
        import lance

        return [i["name"] for i in lance.dataset(dest.place.address).list_indices()]
    import psycopg

    with psycopg.connect(dest.place.conninfo) as connection:
        rows = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
            (dest.place.table, "%hnsw%"),
        ).fetchall()
    return [r[0] for r in rows]


def test_a_lance_index_is_kept_up_to_date(tmp_path: Path) -> None:
    import lance

    dest = parse_destination(f"lance://{tmp_path / 'dataset'}")
    dest.index = IndexSpec(kind="ivf_pq", params={"num_partitions": 2, "num_sub_vectors": 2})
    dest.merge_keyed([_stage(tmp_path, "a.parquet", list(range(300)), 1)], None, ["id"], "{}")
    dataset = lance.dataset(dest.place.address)
    (name,) = [i["name"] for i in dataset.list_indices()]
    dest.merge_keyed([_stage(tmp_path, "b.parquet", list(range(300, 400)), 2)], None, ["id"], "{}")
    dataset = lance.dataset(dest.place.address)
    assert dataset.stats.index_stats(name)["num_unindexed_rows"] == 0
    version = dataset.version
    dest.refresh_index()  # nothing new: no new version
    assert lance.dataset(dest.place.address).version == version


def test_postgresql_needs_a_key_and_never_shows_its_password(postgres_dest: str) -> None:
    dest = parse_destination(postgres_dest)
    assert dest.capabilities.requires_key
    with pytest.raises(InputError, match="needs --key") as refused:
        dest.check_replace_all()
    assert "\n" not in str(refused.value)

    secret = "hunter2-secret"
    bad = parse_destination(
        f"postgresql://someone:{secret}@127.0.0.1:1/db?table=s.t&connect_timeout=2"
    )
    assert secret not in str(bad) and "***" in bad.uri and bad.place.table == "t"
    with pytest.raises(StorageError) as failed:
        bad.check()
    assert secret not in str(failed.value) and "cannot connect" in str(failed.value)


def test_a_postgres_uri_without_a_table_is_refused() -> None:
    with pytest.raises(InputError, match=r"\?table=\[SCHEMA\.\]TABLE"):
        parse_destination("postgresql://me:pw@db:5432/x")


def test_float16_embeddings_are_a_halfvec_column(postgres_dest: str, tmp_path: Path) -> None:
    import psycopg

    dest = parse_destination(postgres_dest)
    vectors = _vectors([1, 2], 5).astype(np.float16)
    staged = tmp_path / "half.parquet"
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float16()), DIM)
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "embedding": embedding}), staged)
    assert dest.merge_keyed([staged], None, ["id"], "{}")
    with psycopg.connect(dest.place.conninfo) as connection:
        (kind,) = connection.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = 'embedding'",
            (dest.place.qualified,),
        ).fetchone()
    assert kind == f"halfvec({DIM})"
    (batch,) = dest.keyed_rows(["id"], ["embedding"])
    back = np.stack(batch.column(1).to_pylist())
    assert np.array_equal(back.astype(np.float16), vectors)
