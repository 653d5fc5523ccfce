"""Every query in sql/ runs on real inputs and gives the expected rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from bertetl.config import EngineConfig
from bertetl.reports.sql import query_files, run_query
from bertetl.reports.summary import summarize
from bertetl.runs.enrich import enrich

TESTED = {"partitions_to_run", "label_counts", "output_table"}


def test_every_sql_file_is_tested_here() -> None:
    assert {f.name.removesuffix(".sql") for f in query_files()} == TESTED


def _plan(source: dict, manifests: dict, params: dict) -> list[tuple]:
    schema = {"partition": pl.String, "input_fingerprint": pl.String}
    manifests = {"damage": [None] * len(manifests["partition"]), **manifests}
    tables = {
        "source": pl.DataFrame(source, schema=schema),
        "manifests": pl.DataFrame(
            manifests, schema={**schema, "config_hash": pl.String, "damage": pl.String}
        ),
    }
    return run_query("partitions_to_run", tables, params).rows()


def test_partitions_to_run_decides_each_case() -> None:
    rows = _plan(
        {"partition": ["a", "b", "c", "d"], "input_fingerprint": ["1", "2", "3", "4"]},
        {
            "partition": ["b", "c", "d", "z"],
            "input_fingerprint": ["2", "changed", "4", "9"],
            "config_hash": ["h", "h", "old", "h"],
        },
        {"config_hash": "h", "force": False},
    )
    assert rows == [
        ("a", "enrich", "new"),
        ("b", "skip", "unchanged"),
        ("c", "enrich", "input changed"),
        ("d", "enrich", "model or config changed"),
        ("z", "orphan", "source partition removed"),
    ]
    forced = _plan(
        {"partition": ["b"], "input_fingerprint": ["2"]},
        {"partition": ["b"], "input_fingerprint": ["2"], "config_hash": ["h"]},
        {"config_hash": "h", "force": True},
    )
    assert forced == [("b", "enrich", "forced")]


def test_partitions_to_run_redoes_damaged_outputs_whatever_else_holds() -> None:
    """Damage (outputs that do not match their manifest) is the reason even when the
    partition is forced or changed; an orphan stays an orphan (never deleted)."""
    rows = _plan(
        {"partition": ["a", "b", "c"], "input_fingerprint": ["1", "2", "3"]},
        {
            "partition": ["a", "b", "c", "z"],
            "input_fingerprint": ["1", "changed", "3", "9"],
            "config_hash": ["h", "h", "old", "h"],
            "damage": ["part-0.parquet missing", "x truncated", None, "y missing"],
        },
        {"config_hash": "h", "force": True},
    )
    assert rows == [
        ("a", "enrich", "damaged: part-0.parquet missing"),
        ("b", "enrich", "damaged: x truncated"),
        ("c", "enrich", "forced"),
        ("z", "orphan", "source partition removed"),
    ]


def test_partitions_to_run_takes_hostile_values_as_data() -> None:
    """Values travel as columns of `params`, so SQL in them is just text."""
    hostile = "x' OR '1'='1'; DROP TABLE source; --"
    rows = _plan(
        {"partition": [hostile, "b"], "input_fingerprint": ["1", "2"]},
        {"partition": ["b"], "input_fingerprint": ["2"], "config_hash": [hostile]},
        {"config_hash": hostile, "force": False},
    )
    assert rows == [("b", "skip", "unchanged"), (hostile, "enrich", "new")]


@pytest.fixture
def enriched_dest(partitioned_source, tiny_classifier_dir: Path, tmp_path: Path) -> Path:
    src = partitioned_source(days=2)
    config = EngineConfig(text_column="text", classify_model=str(tiny_classifier_dir))
    enrich(src, tmp_path / "dest", config)
    return tmp_path / "dest"


def test_label_counts_and_output_table_against_polars(enriched_dest: Path) -> None:
    tables = summarize(enriched_dest, "date")
    frame = pl.read_parquet(enriched_dest / "**" / "*.parquet", hive_partitioning=True)
    expected = (
        frame.with_columns(
            pl.col("date").cast(pl.String).alias("partition"),
            pl.col("label").fill_null("(not encoded)"),
        )
        .group_by("partition", "label")
        .agg(pl.len().cast(pl.Int64).alias("rows"))
        .sort("partition", "rows", "label", descending=[False, True, False])
    )
    assert tables["label_counts"].rows() == expected.select("partition", "label", "rows").rows()
    assert tables["rows"].rows() == [("2026-01-01", 24, 22, 2, 0), ("2026-01-02", 24, 22, 2, 0)]
