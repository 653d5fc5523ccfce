"""Keyed runs (`--key`) on tables that change in place: after edits, deletes, inserts, a row
moved to another file and a changed non-text column, the rerun infers exactly the new and
changed texts (each distinct text once), and DEST equals a fresh full run of the new SOURCE,
key for key, for every kind of DEST."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import InputError
from bertetl.runs.keyed import KeyedOptions, run_keyed
from tests.runs.keyed_places import (
    assert_same_by_key,
    change_source,
    read_dest,
    text_of,
    write_source,
)

KEY = KeyedOptions(key=["id"])


@pytest.fixture
def config(tiny_embed_dir: Path) -> EngineConfig:
    return EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), window_rows=16)


def _model_rows(report) -> int:
    """Rows the model saw, as the engine counted them (not the planner)."""
    return report.stages.get("tokenize", {}).get("rows", 0)


@pytest.fixture(params=["folder", "s3", "delta", "delta-s3", "iceberg", "lance", "postgresql"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, dict[str, str]]:
    """A DEST of each kind and a second one of the same kind for the fresh run."""
    kind = request.param
    if kind == "folder":
        return str(tmp_path / "dest"), str(tmp_path / "fresh"), {}
    if kind in ("s3", "delta-s3"):
        bucket = request.getfixturevalue("bucket")
        options = request.getfixturevalue("storage")
        prefix = "delta://" if kind == "delta-s3" else ""
        return f"{prefix}s3://{bucket}/dest", f"{prefix}s3://{bucket}/fresh", options
    if kind in ("delta", "lance"):
        return f"{kind}://{tmp_path / 'dest'}", f"{kind}://{tmp_path / 'fresh'}", {}
    if kind == "postgresql":
        pytest.importorskip("psycopg")
        return (
            request.getfixturevalue("postgres_dest"),
            request.getfixturevalue("postgres_dest"),
            {},
        )
    catalog = request.getfixturevalue("iceberg_catalog")
    return f"iceberg://{catalog}/db.dest", f"iceberg://{catalog}/db.fresh", {}


def test_rerun_infers_only_new_and_changed_text_and_equals_a_fresh_run(
    place, tmp_path: Path, config: EngineConfig
) -> None:
    dest, fresh, options = place
    src = write_source(tmp_path / "src")
    first = run_keyed(src, dest, config, KEY, storage_options=options)
    assert first.counts["rows_in"] == first.counts["rows_inferred"] == 60
    assert _model_rows(first) == 60

    again = run_keyed(src, dest, config, KEY, storage_options=options)
    assert (again.counts["rows_inferred"], again.counts["rows_written"]) == (0, 0)
    assert not again.committed  # nothing changed: no commit

    changes = change_source(src)
    dry = run_keyed(src, dest, config, KEY, dry_run=True, storage_options=options)
    report = run_keyed(src, dest, config, KEY, storage_options=options)
    # 2 edited texts and 2 distinct new ones: each distinct text through the model once
    assert report.counts["rows_inferred"] == _model_rows(report) == 4
    assert report.counts["rows_deduplicated"] == 1
    assert report.counts["rows_deleted"] == len(changes["deleted"]) == 2
    assert report.counts["rows_in"] == 61
    assert {k: dry.counts[k] for k in dry.counts} == {k: report.counts[k] for k in dry.counts}

    run_keyed(src, fresh, config, KEY, storage_options=options)
    actual, expected = read_dest(dest, options), read_dest(fresh, options)
    assert_same_by_key(actual, expected)
    assert not set(actual["id"].to_list()) & changes["deleted"]


def test_a_table_dest_writes_only_the_changed_rows(tmp_path: Path, config: EngineConfig) -> None:
    src = write_source(tmp_path / "src")
    dest = f"delta://{tmp_path / 'dest'}"
    run_keyed(src, dest, config, KEY)
    changes = change_source(src)
    report = run_keyed(src, dest, config, KEY)
    # edited, inserted and the changed non-text column; the moved row is the same row
    expected = changes["edited"] | changes["inserted"] | changes["other_column"]
    assert report.counts["rows_written"] == len(expected)


def test_rows_moved_between_partitions_are_reused(tmp_path: Path, config: EngineConfig) -> None:
    src = tmp_path / "src"
    for day, ids in (("2026-01-01", range(0, 20)), ("2026-01-02", range(20, 40))):
        (src / f"date={day}").mkdir(parents=True)
        table = pa.table({"id": list(ids), "text": [text_of(i) for i in ids]})
        pq.write_table(table, src / f"date={day}" / "part-0.parquet")
    run_keyed(src, tmp_path / "dest", config, KEY)
    first = pq.read_table(src / "date=2026-01-01" / "part-0.parquet")
    second = pq.read_table(src / "date=2026-01-02" / "part-0.parquet")
    pq.write_table(first.slice(0, 15), src / "date=2026-01-01" / "part-0.parquet")
    pq.write_table(
        pa.concat_tables([second, first.slice(15)]), src / "date=2026-01-02" / "part-0.parquet"
    )
    report = run_keyed(src, tmp_path / "dest", config, KEY)
    assert report.counts["rows_inferred"] == _model_rows(report) == 0
    assert report.counts["rows_deleted"] == 0
    run_keyed(src, tmp_path / "fresh", config, KEY)
    assert_same_by_key(read_dest(str(tmp_path / "dest")), read_dest(str(tmp_path / "fresh")))


def test_the_same_text_across_partitions_is_inferred_once(
    tmp_path: Path, config: EngineConfig
) -> None:
    src = tmp_path / "src"
    for day in range(3):
        (src / f"date=2026-01-0{day + 1}").mkdir(parents=True)
        ids = list(range(day * 10, day * 10 + 10))
        texts = [f"shared text {i % 4}" for i in ids]  # 4 distinct texts in all
        pq.write_table(
            pa.table({"id": ids, "text": texts}), src / f"date=2026-01-0{day + 1}" / "p.parquet"
        )
    report = run_keyed(src, tmp_path / "dest", config, KEY)
    assert report.counts["rows_inferred"] == _model_rows(report) == 4
    assert report.counts["rows_deduplicated"] == 26
    rows = read_dest(str(tmp_path / "dest"))
    assert rows.height == 30
    for _, group in rows.group_by("text"):  # every row of a text has that text's outputs
        assert group["embedding"].to_list() == [group["embedding"][0].to_list()] * group.height


@pytest.mark.parametrize(
    ("ids", "message"),
    [([1, 2, 2, 3, 3, 3], "2 key(s) (id) appear in more than one row of SOURCE: 2, 3"),
     ([1, None, 3], "1 row(s) of SOURCE have a null key (id)")],
    ids=["duplicates", "nulls"],
)  # fmt: skip
def test_duplicate_and_null_keys_are_refused_before_any_model_work(
    tmp_path: Path, config: EngineConfig, ids, message
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": [f"t{i}" for i in range(len(ids))]})
    pq.write_table(table, src / "a.parquet")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_keyed(src, tmp_path / "dest", config, KEY)
    assert not (tmp_path / "dest").exists() or not list((tmp_path / "dest").glob("*.parquet"))


def test_output_columns_key_writes_the_side_table(tmp_path: Path, config: EngineConfig) -> None:
    src = write_source(tmp_path / "src")
    side = KeyedOptions(key=["id"], output_columns="key")
    run_keyed(src, tmp_path / "side", config, side)
    run_keyed(src, tmp_path / "all", config, KEY)
    rows = read_dest(str(tmp_path / "side"))
    assert rows.columns == ["id", "text_fingerprint", "embedding", "enrich_error"]
    full = read_dest(str(tmp_path / "all"))
    assert_same_by_key(rows, full.select(rows.columns))
    change_source(src)  # the side table follows changes as the full one does
    report = run_keyed(src, tmp_path / "side", config, side)
    assert report.counts["rows_inferred"] == 4
    run_keyed(src, tmp_path / "all", config, KEY)
    assert_same_by_key(
        read_dest(str(tmp_path / "side")), read_dest(str(tmp_path / "all")).select(rows.columns)
    )


def test_keep_deleted_keeps_the_rows_of_keys_gone_from_source(
    tmp_path: Path, config: EngineConfig
) -> None:
    src = write_source(tmp_path / "src")
    keep = KeyedOptions(key=["id"], keep_deleted=True)
    run_keyed(src, tmp_path / "dest", config, keep)
    before = read_dest(str(tmp_path / "dest"))
    changes = change_source(src)
    (src / "part-2.parquet").unlink()  # a whole input file gone too
    report = run_keyed(src, tmp_path / "dest", config, keep)
    assert report.counts["rows_deleted"] == 0
    rows = read_dest(str(tmp_path / "dest"))
    assert rows["id"].n_unique() == rows.height
    kept = set(before["id"].to_list()) - set(pq.read_table(src).column("id").to_pylist())
    assert changes["deleted"] <= kept <= set(rows["id"].to_list())


def test_a_changed_model_reinfers_every_row(
    tmp_path: Path, config: EngineConfig, tiny_classifier_dir: Path
) -> None:
    src = write_source(tmp_path / "src")
    run_keyed(src, tmp_path / "dest", config, KEY)
    other = config.model_copy(update={"classify_model": str(tiny_classifier_dir)})
    report = run_keyed(src, tmp_path / "dest", other, KEY)
    assert report.counts["rows_inferred"] == 60 and report.counts["rows_reused"] == 0
    assert "label" in read_dest(str(tmp_path / "dest")).columns


def test_outputs_of_an_unkeyed_run_are_replaced_not_trusted(
    tmp_path: Path, config: EngineConfig
) -> None:
    """Nothing records the model and config that wrote them: every row is inferred again."""
    from bertetl.runs.enrich import enrich

    src = write_source(tmp_path / "src")
    enrich(src, tmp_path / "dest", config)
    report = run_keyed(src, tmp_path / "dest", config, KEY)
    assert report.counts["rows_inferred"] == _model_rows(report) == 60
    run_keyed(src, tmp_path / "fresh", config, KEY)
    assert_same_by_key(read_dest(str(tmp_path / "dest")), read_dest(str(tmp_path / "fresh")))


def test_a_table_source_changed_in_place_is_followed_by_key(
    tmp_path: Path, config: EngineConfig
) -> None:
    """A Delta SOURCE updated and deleted from in place (as CDC does), read at its version."""
    import deltalake

    src = write_source(tmp_path / "files")
    table = str(tmp_path / "source-table")
    deltalake.write_deltalake(table, pq.read_table(src))
    run_keyed(f"delta://{table}", tmp_path / "dest", config, KEY)
    source = deltalake.DeltaTable(table)
    source.update(updates={"text": "'rewritten in place'"}, predicate="id = 5")
    source.delete("id = 7")
    report = run_keyed(f"delta://{table}", tmp_path / "dest", config, KEY)
    assert (report.counts["rows_inferred"], report.counts["rows_deleted"]) == (1, 1)
    run_keyed(f"delta://{table}", tmp_path / "fresh", config, KEY)
    assert_same_by_key(read_dest(str(tmp_path / "dest")), read_dest(str(tmp_path / "fresh")))


def test_int8_embeddings_of_a_rerun_use_the_first_runs_ranges(
    tmp_path: Path, config: EngineConfig
) -> None:
    """Rows inferred by a later keyed run are quantized with the ranges the first run
    calibrated, so DEST's int8 embeddings all share one scale: equal to a fresh run's where
    the fresh run is given those ranges too (here: the same first window)."""
    import json

    int8 = config.model_copy(update={"embed_precision": "int8"})
    src = write_source(tmp_path / "src")
    run_keyed(src, tmp_path / "dest", int8, KEY)
    first = json.loads((tmp_path / "dest" / "_bertetl_keyed.json").read_text())
    assert first["embedding_ranges"]
    change_source(src)
    report = run_keyed(src, tmp_path / "dest", int8, KEY)
    assert report.counts["rows_inferred"] == 4
    again = json.loads((tmp_path / "dest" / "_bertetl_keyed.json").read_text())
    assert again["embedding_ranges"] == first["embedding_ranges"]


def test_a_file_bertetl_did_not_write_is_never_replaced(
    tmp_path: Path, config: EngineConfig
) -> None:
    src = write_source(tmp_path / "src")
    (tmp_path / "dest").mkdir()
    foreign = tmp_path / "dest" / "part-1.parquet"
    pq.write_table(pa.table({"mine": [1, 2]}), foreign)
    before = foreign.read_bytes()
    with pytest.raises(InputError, match="bertetl did not write"):
        run_keyed(src, tmp_path / "dest", config, KEY)
    assert foreign.read_bytes() == before
    assert not (tmp_path / "dest" / "part-0.parquet").exists()
