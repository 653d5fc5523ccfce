"""`--emit windows` in partitioned runs (a folder, Lance and Delta DEST), against a plain
`enrich` of each partition's file: the manifests count the rows read apart from the window
rows written, and an edit re-enriches its partition whole (no row reuse)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import ConfigError, ExecutorError
from bertetl.executors import make_executor
from bertetl.executors.local import LocalExecutor
from bertetl.runs.enrich import enrich
from bertetl.runs.keyed import KeyedOptions, run_keyed
from tests.engine.test_long_text import words
from tests.runs.test_tables import read_parquet, read_table, run_all

DAYS = ["2026-01-01", "2026-01-02"]


@pytest.fixture
def config(tiny_embed_dir: Path) -> EngineConfig:
    return EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        device="cpu",
        long_text="window",
        window_overlap=8,
        emit="windows",
    )


@pytest.fixture
def executor(config: EngineConfig):
    executor = LocalExecutor(config)
    executor.setup()
    yield executor
    executor.teardown()


def write_source(root: Path) -> Path:
    """Two days of rows: long texts (several windows each), short ones and a null."""
    for day, date in enumerate(DAYS):
        texts = [words(120 + 40 * i, day * 10 + i) for i in range(3)] + ["short one", None]
        folder = root / f"date={date}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": list(range(5)), "text": texts}), folder / "part-0.parquet")
    return root


def expected_rows(src: Path, config: EngineConfig, work: Path) -> pl.DataFrame:
    """Each partition's file through a plain `enrich` (the window rows of one file)."""
    frames = []
    for date in DAYS:
        out = work / f"{date}.parquet"
        enrich(src / f"date={date}" / "part-0.parquet", out, config)
        frames.append(pl.read_parquet(out).with_columns(pl.lit(date).alias("date")))
    return pl.concat(frames)


def assert_same(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    keys = ["date", "id", "window"]
    actual = actual.with_columns(pl.col("date").cast(pl.String)).sort(keys, nulls_last=True)
    expected = expected.sort(keys, nulls_last=True)
    for name in ["id", "text", "window", "char_start", "char_end", "enrich_error"]:
        assert actual[name].to_list() == expected[name].to_list(), name
    got, want = actual["embedding"].to_list(), expected["embedding"].to_list()
    assert [g is None for g in got] == [w is None for w in want]
    for g, w in zip(got, want, strict=True):
        if g is not None:
            assert g == pytest.approx(w, abs=1e-6)


@pytest.mark.parametrize("kind", ["folder", "lance", "delta"])
def test_backfill_window_rows_then_an_edit_reenriches_its_partition(
    executor: LocalExecutor, config: EngineConfig, tmp_path: Path, kind: str
) -> None:
    if kind != "folder":
        pytest.importorskip({"lance": "lance", "delta": "deltalake"}[kind])
    src = write_source(tmp_path / "src")
    dest = {
        "folder": tmp_path / "out",
        "lance": f"lance://{tmp_path / 'out.lance'}",
        "delta": f"delta://{tmp_path / 'out.delta'}",
    }[kind]

    def read() -> pl.DataFrame:
        return read_parquet(tmp_path / "out") if kind == "folder" else read_table_any(str(dest))

    expected = expected_rows(src, config, tmp_path / "expected")
    manifests = run_all(executor, src, dest)
    assert sorted(manifests) == DAYS
    for date, manifest in manifests.items():
        day = expected.filter(pl.col("date") == date)
        assert (manifest.rows_in, manifest.rows_out) == (5, day.height) and day.height > 10
        assert (manifest.rows_failed, manifest.rows_inferred, manifest.rows_reused) == (1, 4, 0)
    assert_same(read(), expected)
    assert run_all(executor, src, dest) == {}  # nothing changed

    edited = src / "date=2026-01-02" / "part-0.parquet"
    table = pq.read_table(edited)
    texts = table.column("text").to_pylist()
    texts[4] = words(200, 99)  # the null row becomes a long text
    pq.write_table(table.set_column(1, "text", pa.array(texts)), edited)
    manifests = run_all(executor, src, dest)
    assert list(manifests) == ["2026-01-02"]
    (manifest,) = manifests.values()
    assert (manifest.rows_in, manifest.rows_failed, manifest.rows_reused) == (5, 0, 0)
    assert_same(read(), expected_rows(src, config, tmp_path / "expected-after"))


def read_table_any(uri: str) -> pl.DataFrame:
    if uri.startswith("lance://"):
        import lance

        return pl.from_arrow(lance.dataset(uri.removeprefix("lance://")).to_table())  # type: ignore[return-value]
    return read_table(uri)


def test_keyed_runs_and_ray_refuse_window_rows(config: EngineConfig, tmp_path: Path) -> None:
    src = write_source(tmp_path / "src")
    with pytest.raises(ConfigError, match="--emit windows with --key is not supported"):
        run_keyed(src, tmp_path / "out", config, KeyedOptions(key=["id"]))
    pytest.importorskip("ray")
    ray_config = EngineConfig(**{**config.model_dump(), "executor": "ray"})
    with pytest.raises(ExecutorError, match="does not write window rows"):
        make_executor(ray_config)


def test_progress_counts_rows_read_not_window_rows(executor: LocalExecutor, tmp_path: Path) -> None:
    from bertetl.executors import Job
    from bertetl.io.read import SourceFile

    path = write_source(tmp_path / "src") / f"date={DAYS[0]}" / "part-0.parquet"
    seen: list[int] = []
    job = Job(SourceFile(str(path), path.name), tmp_path / "out.parquet", pq.read_schema(path))
    (result,) = executor.run_jobs([job], scratch=tmp_path / "scratch", on_rows=seen.append)
    assert sum(seen) == result.rows_in == 5 and result.rows > 10
    assert result.rows == pq.read_metadata(tmp_path / "out.parquet").num_rows
