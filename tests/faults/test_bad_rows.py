"""Property-based: whatever the rows hold, every row comes out, in order, with an embedding
or an `enrich_error` (never both, never neither), its bytes unchanged: invalid UTF-8 too."""

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
from bertetl.engine.tokenize import INVALID_TEXT
from bertetl.io.read import SourceFile

#: Any unicode scalar (controls, NUL, combining marks, emoji, RTL), but no lone surrogates,
#: which UTF-8 (and so Parquet) cannot hold.
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
HUGE_TEXT = st.builds(lambda piece, n: piece * n, ANY_TEXT.filter(bool), st.integers(500, 5000))
#: Bytes a string column can hold though they are not UTF-8 (a careless writer's).
NOT_UTF8 = st.binary(max_size=30).filter(lambda raw: not _utf8(raw))
TEXT = st.one_of(
    st.none(),
    st.just(""),
    st.sampled_from([" ", "\t\n", "\x00", "\x00\x00 \x00", "\u200b", "\ufeff"]),
    ANY_TEXT,
    HUGE_TEXT,
    NOT_UTF8,
)
ROWS = st.lists(st.tuples(st.integers(0, 5), TEXT), min_size=1, max_size=40)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _raw(text: str | bytes | None) -> bytes | None:
    return text.encode() if isinstance(text, str) else text


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
            "text": pa.array([_raw(r[1]) for r in rows], pa.binary()).view(pa.string()),
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
    for (_, text), has_embedding, error in zip(rows, embedded, errors, strict=True):
        assert has_embedding != (error is not None), (text, error)
        if isinstance(text, bytes):
            assert error == INVALID_TEXT
        elif text is None or not text.strip():
            assert error is not None  # null, empty or whitespace-only: an error, never a vector
    assert result.rows_failed == sum(e is not None for e in errors)
