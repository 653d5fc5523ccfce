"""Property-based: whatever the rows hold, every row comes out, in order, with an embedding
or an `enrich_error` (never both, never neither)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertetl.config import EngineConfig
from bertetl.engine.pipeline import Pipeline
from bertetl.io.read import SourceFile

#: Any unicode scalar (controls, NUL, combining marks, emoji, RTL), but no lone surrogates,
#: which UTF-8 (and so Parquet) cannot hold.
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
HUGE_TEXT = st.builds(lambda piece, n: piece * n, ANY_TEXT.filter(bool), st.integers(500, 5000))
TEXT = st.one_of(
    st.none(),
    st.just(""),
    st.sampled_from([" ", "\t\n", "\x00", "\x00\x00 \x00", "\u200b", "\ufeff"]),
    ANY_TEXT,
    HUGE_TEXT,
)
ROWS = st.lists(st.tuples(st.integers(0, 5), TEXT), min_size=1, max_size=40)


@pytest.fixture(scope="module")
def pipeline(tiny_embed_dir: Path):
    config = EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), window_rows=7, batch_tokens=96
    )
    pipeline = Pipeline(config)
    pipeline.setup()
    yield pipeline
    pipeline.teardown()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=ROWS)
def test_every_row_comes_out_in_order_with_an_output_or_an_error(pipeline, rows) -> None:
    table = pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),  # duplicate ids on purpose
            "text": pa.array([r[1] for r in rows], pa.string()),
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.parquet"
        pq.write_table(table, source, row_group_size=5)
        target = Path(folder) / "out.parquet"
        result = pipeline.run_file(
            SourceFile(str(source), "in.parquet"), target, pq.read_schema(source)
        )
        assert result.error is None
        out = pq.read_table(target)
    assert out.select(["id", "text"]).equals(table)
    embedded = out.column("embedding").is_valid().to_pylist()
    errors = out.column("enrich_error").to_pylist()
    texts = table.column("text").to_pylist()
    for text, has_embedding, error in zip(texts, embedded, errors, strict=True):
        assert has_embedding != (error is not None), (text, error)
        if text is None or not text.strip():
            assert error is not None  # null, empty or whitespace-only: an error, never a vector
    assert result.rows_failed == sum(e is not None for e in errors)
