"""The destination contract: every registered kind of DEST, on its real server, through the
`Destination` protocol alone (no model): the lock is exclusive, a sink that aborts leaves
nothing, a partition commit reads back with its manifest and verifies, a rerun replaces rather
than doubles, a damaged output is found, and a file bertetl did not write is refused where a
commit would replace it. A new kind passes this before it is done (ARCHITECTURE.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bertetl.errors import CommitError, InputError
from bertetl.io.destinations import DESTINATIONS, Destination, as_destination, parse_destination
from bertetl.io.manifest import Manifest, fingerprint_output
from bertetl.io.partitions import Partition, folder_value
from bertetl.io.read import SourceFile
from bertetl.schema import ENRICH_ERROR

COLUMN = "day"


@dataclass
class Case:
    """One kind of DEST on its server: the DEST text, its options, and how to damage a
    committed partition from outside bertetl (as a user or another tool would)."""

    dest: Destination
    damage: Callable[[Destination, str], None]


def _rows(value: str, count: int) -> pa.Table:
    """A partition's enriched rows, as bertetl writes them (an `enrich_error` column)."""
    return pa.table(
        {
            "id": pa.array([f"{value}-{i}" for i in range(count)]),
            "text": pa.array([f"text {i} of {value}" for i in range(count)], pa.large_string()),
            ENRICH_ERROR: pa.array([None] * count, pa.string()),
        }
    )


def _partition(value: str) -> Partition:
    folder = f"{COLUMN}={folder_value(value)}"
    file = SourceFile(f"/nowhere/{folder}/part-0.parquet", f"{folder}/part-0.parquet")
    return Partition(COLUMN, value, folder, (file,))


def _commit(dest: Destination, value: str, table: pa.Table) -> Manifest:
    """Stage one output through the destination's sink, then commit it with its manifest,
    as `bertetl.runs.staged` does."""
    partition = _partition(value)
    owned = dest.check_foreign([partition])[value]
    target = dest.partition_target(partition)
    with dest.lock(), dest.staging() as staged:
        output = staged / "part-0.parquet"
        sink = dest.sink(output, table.schema)
        sink.open()
        for batch in table.to_batches(max_chunksize=7):
            sink.write(batch)
        sink.commit()
        manifest = Manifest(
            partition_column=COLUMN,
            partition=value,
            rows_in=table.num_rows,
            rows_out=table.num_rows,
            rows_inferred=table.num_rows,
            outputs=["part-0.parquet"],
            output_files=[fingerprint_output(output, "part-0.parquet")],
            config_hash="contract",
            started=datetime.now(UTC).isoformat(),
        )
        return dest.commit_partition(target, staged, manifest, owned, [output])


def _read_back(dest: Destination, value: str) -> pa.Table:
    """What a reader of DEST sees of the partition: the files its manifest lists, or the
    table's rows (read with the format's own package)."""
    if dest.kind == "postgresql":
        from bertetl.io.tables.base import NULL_PARTITION

        if value == NULL_PARTITION:  # the null partition, as every table kind stores it
            return _postgres_rows(dest, f'WHERE "{COLUMN}" IS NULL', ())
        return _postgres_rows(dest, f'WHERE "{COLUMN}" = %s', (value,))
    if not dest.capabilities.files:
        from bertetl.io.tables import read_partition

        return read_partition(dest.place, COLUMN, value, ["id", "text"])
    folder, manifest = dest.committed_manifests(COLUMN)[value]
    tables = []
    for name in manifest.outputs:
        where = folder / name
        if hasattr(where, "open_input_file"):
            with where.open_input_file() as handle:
                tables.append(pq.read_table(handle, columns=["id", "text"]))
        else:
            tables.append(pq.read_table(where, columns=["id", "text"]))
    return pa.concat_tables(tables)


def _postgres_rows(dest: Destination, where: str, args: tuple[str, ...]) -> pa.Table:
    """The table's `id` and `text` (rows matching `where`), read with psycopg itself."""
    import psycopg

    place = dest.place
    with psycopg.connect(place.conninfo) as connection:
        rows = connection.execute(
            f"SELECT id, text FROM {place.qualified} {where}", args
        ).fetchall()
    return pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]})


def _damage_postgres(dest: Destination, value: str) -> None:
    """Insert a copy of one of the partition's rows with psycopg (another writer)."""
    import psycopg

    place = dest.place
    with psycopg.connect(place.conninfo) as connection:
        connection.execute(
            f"INSERT INTO {place.qualified} SELECT * FROM {place.qualified} "
            f'WHERE "{COLUMN}" = %s LIMIT 1',
            (value,),
        )


def _sorted_ids(table: pa.Table) -> list[str]:
    return sorted(table.column("id").to_pylist())


# -- the kinds, each on its real server -------------------------------------------------------


def _damage_file(dest: Destination, value: str) -> None:
    """Truncate the partition's committed output (a disk or a user cut it short)."""
    folder, manifest = dest.committed_manifests(COLUMN)[value]
    where = folder / manifest.outputs[0]
    if hasattr(where, "fs"):
        with where.fs.open_output_stream(where.path) as out:
            out.write(b"PAR1")
    else:
        Path(where).write_bytes(b"PAR1")


def _damage_table(dest: Destination, value: str) -> None:
    """Append a copy of a row to the table with the format's own package (another writer)."""
    ref = dest.place
    if ref.format == "lance":
        import lance

        from bertetl.io.tables import lance_storage_options

        options = lance_storage_options(ref) or None
        row = lance.dataset(ref.address, storage_options=options).to_table(limit=1)
        lance.write_dataset(row, ref.address, mode="append", storage_options=options)
        return
    if ref.format == "delta":
        from deltalake import DeltaTable, write_deltalake

        from bertetl.io.tables import delta_storage_options

        options = delta_storage_options(ref) or None
        row = DeltaTable(ref.address, storage_options=options).to_pyarrow_table().slice(0, 1)
        write_deltalake(ref.address, row, mode="append", storage_options=options)
        return
    from pyiceberg.catalog import load_catalog

    catalog, identifier = ref.address.split("/", 1)
    table = load_catalog(catalog).load_table(identifier)
    table.append(table.scan(limit=1).to_arrow())


@pytest.fixture(
    params=[
        "folder",
        "s3",
        "gs",
        "abfs",
        "delta",
        "delta-s3",
        "iceberg",
        "lance",
        "lance-s3",
        "postgresql",
    ]
)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    kind = request.param
    if kind == "folder":
        return Case(parse_destination(str(tmp_path / "dest")), _damage_file)
    if kind in ("s3", "gs", "abfs"):
        from tests.io.stores import store_for

        store = store_for(request, kind)
        return Case(parse_destination(store.uri("dest"), store.options), _damage_file)
    if kind == "delta":
        return Case(parse_destination(f"delta://{tmp_path / 'table'}"), _damage_table)
    if kind == "postgresql":
        return Case(parse_destination(request.getfixturevalue("postgres_dest")), _damage_postgres)
    if kind == "lance":
        return Case(parse_destination(f"lance://{tmp_path / 'dataset'}"), _damage_table)
    if kind == "lance-s3":
        bucket = request.getfixturevalue("bucket")
        options = request.getfixturevalue("storage")
        return Case(parse_destination(f"lance://s3://{bucket}/dataset", options), _damage_table)
    if kind == "delta-s3":
        bucket = request.getfixturevalue("bucket")
        options = request.getfixturevalue("storage")
        return Case(parse_destination(f"delta://s3://{bucket}/table", options), _damage_table)
    catalog = request.getfixturevalue("iceberg_catalog")
    return Case(parse_destination(f"iceberg://{catalog}/db.enriched"), _damage_table)


def test_every_kind_is_registered_once_and_parsed_to_its_class(case: Case) -> None:
    assert type(case.dest) in DESTINATIONS.values()
    assert isinstance(case.dest, Destination)
    assert as_destination(case.dest) is case.dest
    assert as_destination(case.dest.place) == case.dest  # the place alone finds the kind


def test_the_lock_is_exclusive(case: Case) -> None:
    again = as_destination(case.dest.place)
    with case.dest.lock():
        with pytest.raises(CommitError, match="another bertetl run"):
            again.lock().acquire()
    with again.lock():  # released: the next run takes it
        pass


def test_a_sink_that_aborts_leaves_nothing(case: Case) -> None:
    table = _rows("x", 5)
    with case.dest.staging() as staged:
        output = staged / "part-0.parquet"
        sink = case.dest.sink(output, table.schema)
        sink.open()
        sink.write(table.to_batches()[0])
        sink.abort()
        assert not output.exists() and not list(staged.iterdir())


def test_a_commit_reads_back_verifies_and_a_rerun_replaces(case: Case) -> None:
    dest = case.dest
    first, second = _rows("2026-01-01", 12), _rows("2026-01-02", 5)
    _commit(dest, "2026-01-01", first)
    _commit(dest, "2026-01-02", second)
    committed = dest.committed_manifests(COLUMN)
    assert sorted(committed) == ["2026-01-01", "2026-01-02"]
    for value, table in (("2026-01-01", first), ("2026-01-02", second)):
        where, manifest = committed[value]
        assert manifest.rows_out == table.num_rows and manifest.config_hash == "contract"
        assert dest.verify(where, manifest) == []
        assert _sorted_ids(_read_back(dest, value)) == _sorted_ids(table)
    changed = _rows("2026-01-01", 7)  # the partition again, with other rows
    _commit(dest, "2026-01-01", changed)
    assert _sorted_ids(_read_back(dest, "2026-01-01")) == _sorted_ids(changed)  # not doubled
    assert _sorted_ids(_read_back(dest, "2026-01-02")) == _sorted_ids(second)  # untouched
    where, manifest = dest.committed_manifests(COLUMN)["2026-01-01"]
    assert manifest.rows_out == 7 and dest.verify(where, manifest) == []


def test_a_damaged_output_is_found(case: Case) -> None:
    _commit(case.dest, "2026-01-01", _rows("2026-01-01", 9))
    case.damage(case.dest, "2026-01-01")
    where, manifest = case.dest.committed_manifests(COLUMN)["2026-01-01"]
    assert case.dest.verify(where, manifest)


def test_a_file_bertetl_did_not_write_is_refused(case: Case) -> None:
    if not case.dest.capabilities.files:
        pytest.skip("a table's commit replaces only its own partition's rows (no files)")
    _commit(case.dest, "2026-01-01", _rows("2026-01-01", 3))
    where = case.dest.partition_target(_partition("2026-01-01")) / "notes.txt"
    if hasattr(where, "fs"):
        with where.fs.open_output_stream(where.path) as out:
            out.write(b"mine")
    else:
        Path(where).write_text("mine")
    with pytest.raises(InputError, match=r"notes\.txt"):
        case.dest.check_foreign([_partition("2026-01-01")])


def test_leftovers_of_a_killed_run_are_cleaned(case: Case) -> None:
    """A staging folder a killed run left (it never reached its `finally`) is removed by the
    next run's cleaning, holding the lock."""
    staging = case.dest.staging()
    folder = staging.__enter__()  # never exited: as a SIGKILL leaves it
    (folder / "part-0.parquet").write_bytes(b"half")
    with case.dest.lock():
        assert case.dest.clean_leftovers() >= 1
    assert not folder.exists()


def test_a_dest_inside_or_holding_another_runs_dest_is_refused(case: Case) -> None:
    """Readers of an outer DEST would see an inner DEST's rows as its own: a DEST inside
    another run's DEST (its lock, or a committed partition's manifest, above it) or holding
    one (a lock below it) is refused by name; a sibling is not."""
    if not case.dest.capabilities.files:
        pytest.skip("a table is one name in its catalog: nothing nests inside it")
    dest = case.dest
    _commit(dest, "2026-01-01", _rows("2026-01-01", 3))
    dest.check()  # its own lock and manifests are no other run's
    inside = as_destination(dest.place / "day=2026-01-01" / "more")
    with pytest.raises(InputError, match="lies inside another run's DEST"):
        inside.check()
    sibling = as_destination(dest.place.parent / "sibling")
    sibling.check()
    inner = as_destination(dest.place / "inner")
    with inner.lock():  # a run writing DEST/inner now
        with pytest.raises(InputError, match=r"holds another run's DEST .*inner"):
            dest.check()


#: Partition values a warehouse holds: null (Hive's spelling), empty, folder-name breakers,
#: spaces, unicode, long ones. (Delta escapes every non-ASCII byte of a folder name as %XX,
#: so a value of more than about 20 four-byte characters passes the filesystem's 255-byte
#: name limit there; docs/STORAGE.md.)
PARTITION_VALUES = st.one_of(
    st.sampled_from(
        [
            "__HIVE_DEFAULT_PARTITION__",
            "",
            "a/b",
            "x=y",
            "50%",
            "1#?*[x]",
            "a b",
            "日本 ü",
            "v" * 150,
        ]
    ),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=20,
    ),
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.lists(PARTITION_VALUES, min_size=1, max_size=3, unique=True))
@example(values=["__HIVE_DEFAULT_PARTITION__"])  # the null partition: found once by search
def test_partition_values_read_back_and_every_row_is_accounted_for(
    case: Case, values: list[str]
) -> None:
    """Whatever a partition value holds, every kind commits it as one partition that reads
    back under the same value, with every row once (rows in = rows out), also for a reader
    that parses the hive folder names."""
    dest = case.dest
    if not dest.capabilities.files and "" in values:
        values = [v for v in values if v != ""] or ["blank"]  # Delta stores "" as null
    expected = {}
    for index, value in enumerate(values):
        table = _rows(f"{index}", 3 + index)
        manifest = _commit(dest, value, table)
        assert manifest.rows_in == manifest.rows_out == table.num_rows
        expected[value] = _sorted_ids(table)
    committed = dest.committed_manifests(COLUMN)
    for value, ids in expected.items():
        assert value in committed, (value, sorted(committed))
        assert _sorted_ids(_read_back(dest, value)) == ids
    if dest.capabilities.files:  # a reader parsing the hive folders sees the same values
        from bertetl.io.read import discover

        assert set(expected) <= {f.partition.get(COLUMN) for f in discover(dest.place)}
