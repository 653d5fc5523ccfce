"""Long texts: token windows by the documented rule, against plain-transformers references."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.engine import tokenize
from bertetl.engine.long_text import LongTextOptions, WindowRule, combine_windows, cut_windows
from bertetl.engine.model_files import resolve_model_dir
from bertetl.engine.tokenize import TokenizeStage
from bertetl.runs.enrich import enrich
from tests.reference import cosine, reference_windowed, reference_windows

WORDS = (
    "the film moves slowly but its cast carries every scene with warmth and wit while the "
    "score swells over long shots of the coast; critics praised the ending, others found it "
    "hollow. a ticket about login errors after a password reset was escalated twice."
).split()


def words(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


# ---- the rule itself ------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [0, 3, 9])
@pytest.mark.parametrize("max_windows", [1, 2, 4, 64])
def test_cut_windows_follows_the_rule(overlap: int, max_windows: int) -> None:
    width = 10
    rule = WindowRule(width, overlap if max_windows > 1 else 0, max_windows)
    rows = [list(range(100, 100 + n)) for n in (0, 1, 9, 10, 11, 19, 20, 21, 57, 200)]
    kept = [row[: rule.limit] for row in rows]
    offsets = np.cumsum([0, *map(len, kept)])
    values = np.array([t for row in kept for t in row], dtype=np.int32)
    windows = rule.windows(np.array([len(row) for row in kept]))
    windows[0] = 0  # a row without tokens (rejected text) gets no window
    out = cut_windows(offsets, values, windows, rule, [1], [2]).to_pylist()
    for row, got in zip(rows[1:], out[1:], strict=True):
        expected = reference_windows(row, width, overlap if max_windows > 1 else 0, max_windows)
        assert got == [[1, *w, 2] for w in expected]
    assert out[0] == []


def test_combine_keeps_single_windows_bit_for_bit_and_weights_the_rest() -> None:
    outputs = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    windows = np.array([1, 0, 3, 2])
    weights = np.array([5, 10, 10, 4, 8, 8])
    combined = combine_windows(outputs, windows, weights)
    assert combined[0].tobytes() == outputs[0].tobytes()
    assert not combined[1].any()
    expected = (outputs[1:4] * np.array([10, 10, 4])[:, None]).sum(0) / 24
    np.testing.assert_allclose(combined[2], expected, rtol=1e-6)
    np.testing.assert_allclose(combined[3], outputs[4:6].mean(0), rtol=1e-6)


def test_overlap_must_leave_room() -> None:
    with pytest.raises(ValueError, match="--window-overlap 10"):
        WindowRule(10, 10, 4)


# ---- tokenizing a prefix gives the tokens of the whole text ----------------------------

TRICKY = [
    "x" * 150 + " tail " + "y" * 99 + " end",  # longer than WordPiece's 100-char words
    " " * 700 + "after a long run of spaces " * 20,
    "naïve café résumé " * 40,
    "这部电影的画面很美" * 50,
    "a,b;c.d!e?" * 100,
    words(400, 1) + " " + "z" * 120,
    "\x00\x01" * 300 + " words at last " * 10,
]


@pytest.mark.parametrize("long_text", ["truncate", "window"])
def test_prefix_tokenization_equals_whole_text(
    tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch, long_text: str
) -> None:
    from transformers import AutoTokenizer

    options = LongTextOptions(long_text, window_overlap=4, max_windows=3, token_stats=True)
    stage = TokenizeStage(tiny_embed_dir, "text", "err", "k", None, options)
    stage.setup()
    monkeypatch.setattr(tokenize, "CHARS_PER_TOKEN", 1)  # every text takes the prefix path
    monkeypatch.setattr(tokenize, "PREFIX_SLACK", 0)
    monkeypatch.setattr(tokenize, "COUNT_SLICE", 37)  # and the counter slices a lot
    texts = [text[:cut] for text in TRICKY for cut in (len(text), 61, 173, 311)]
    reference = AutoTokenizer.from_pretrained(tiny_embed_dir)
    limit = stage.rule.limit
    for text, row in zip(texts, stage.content_tokens(texts), strict=True):
        whole = reference(text, add_special_tokens=False)["input_ids"]
        assert row.ids == whole[:limit], text[:40]
        assert row.truncated == (len(whole) > limit)
        assert row.total == len(whole)


def test_ner_prefix_tokenization_keeps_the_whole_texts_offsets(
    tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NER tokenizer's encodings from a prefix: the whole text's ids and character
    offsets (of the tokens the model sees) and whether it has more."""
    from transformers import AutoTokenizer

    from bertetl.engine.ner import NerTokenizeStage

    stage = NerTokenizeStage(tiny_embed_dir, "text", "err", "k", 40)
    stage.setup()
    monkeypatch.setattr(tokenize, "CHARS_PER_TOKEN", 1)  # every text takes the prefix path
    monkeypatch.setattr(tokenize, "PREFIX_SLACK", 0)
    texts = [text[:cut] for text in TRICKY for cut in (len(text), 61, 173)]
    reference = AutoTokenizer.from_pretrained(tiny_embed_dir)
    limit = stage.rule.limit
    encodings, truncated = stage.encodings(texts)
    for text, encoding, more in zip(texts, encodings, truncated, strict=True):
        whole = reference(text, add_special_tokens=False, return_offsets_mapping=True)
        assert encoding.ids[:limit] == whole["input_ids"][:limit], text[:40]
        assert encoding.offsets[:limit] == whole["offset_mapping"][:limit], text[:40]
        assert more == (len(whole["input_ids"]) > limit)
    assert truncated.any() and not truncated.all()


# ---- window mode against plain transformers --------------------------------------------


@pytest.fixture(scope="module")
def long_texts() -> list[str]:
    return [words(n, n) for n in (25, 60, 100, 150, 2600)]


@pytest.fixture(scope="module")
def minilm_reference(long_texts: list[str]) -> dict[int, tuple[np.ndarray, list[int]]]:
    model = resolve_model_dir("minilm")
    return {o: reference_windowed(model, long_texts, 64, o, 64) for o in (0, 32)}


def _run(tmp_path: Path, texts: list[str], **options: object) -> pa.Table:
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), src)
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.parquet"
    config = EngineConfig(text_column="text", device="cpu", token_stats=True, **options)
    report = enrich(src, out, config)
    assert not report.failures
    return pq.read_table(out)


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [0, 32])
@pytest.mark.parametrize("batch_tokens", [512, 4096])
def test_minilm_windows_match_plain_transformers(
    tmp_path: Path,
    long_texts: list[str],
    minilm_reference: dict[int, tuple[np.ndarray, list[int]]],
    overlap: int,
    batch_tokens: int,
) -> None:
    table = _run(
        tmp_path,
        long_texts,
        embed_model="minilm",
        long_text="window",
        window_overlap=overlap,
        max_length=64,
        batch_tokens=batch_tokens,
    )
    expected, counts = minilm_reference[overlap]
    assert {1, 2, 3} <= set(counts) and max(counts) >= 40
    assert table.column("windows").to_pylist() == counts
    # 2,600 words need more than 64 windows of 62 - 32 new tokens: that row is capped
    assert table.column("truncated").to_pylist() == [c == 64 for c in counts]
    engine = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert cosine(engine, expected).min() >= 0.9999


@pytest.mark.parametrize("fixture", ["tiny_classifier_dir", "tiny_multilabel_dir"])
@pytest.mark.parametrize("overlap", [0, 8])
def test_classifier_windows_match_plain_transformers(
    tmp_path: Path, request: pytest.FixtureRequest, fixture: str, overlap: int
) -> None:
    model_dir = request.getfixturevalue(fixture)
    texts = [words(n, n) for n in (10, 40, 70, 900)]
    table = _run(
        tmp_path,
        texts,
        classify_model=str(model_dir),
        long_text="window",
        window_overlap=overlap,
        include_scores=True,
        batch_tokens=256,
        max_length=48,
    )
    expected, counts = reference_windowed(model_dir, texts, 48, overlap, 64, kind="classify")
    assert table.column("windows").to_pylist() == counts and max(counts) > 3
    scores = np.array(table.column("scores").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    labels = table.schema.field("scores").metadata[b"labels"]
    names = np.array(__import__("json").loads(labels))
    assert table.column("label").to_pylist() == list(names[expected.argmax(1)])


def test_rows_that_fit_are_byte_identical_in_both_modes(
    tmp_path: Path, tiny_embed_dir: Path, tiny_classifier_dir: Path, text_table: pa.Table
) -> None:
    def run(table: pa.Table, mode: str) -> pa.Table:
        src = tmp_path / f"src-{table.num_rows}.parquet"
        pq.write_table(table, src)
        config = EngineConfig(
            text_column="text",
            embed_model=str(tiny_embed_dir),
            classify_model=str(tiny_classifier_dir),
            include_scores=True,
            device="cpu",
            long_text=mode,
            token_stats=True,
        )
        enrich(src, tmp_path / f"{mode}-{table.num_rows}.parquet", config)
        return pq.read_table(tmp_path / f"{mode}-{table.num_rows}.parquet")

    mixed = run(text_table, "window")
    fits = pa.compute.equal(mixed.column("windows"), 1)
    assert 0 < pa.compute.sum(fits).as_py() < text_table.num_rows
    table = text_table.filter(pa.compute.fill_null(fits, True))  # and the null-text rows
    assert run(table, "truncate").equals(run(table, "window"))


def test_cap_keeps_the_first_windows_and_marks_the_row(
    tmp_path: Path, tiny_embed_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_dir)
    text = words(9000, 7)
    total = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    needed = len(reference_windows(list(range(total)), 46, 8, 10**6))
    assert needed >= 200
    table = _run(
        tmp_path,
        [text, "short one"],
        embed_model=str(tiny_embed_dir),
        long_text="window",
        window_overlap=8,
        max_windows=8,
    )
    assert table.column("windows").to_pylist() == [8, 1]
    assert table.column("truncated").to_pylist() == [True, False]
    assert table.column("tokens").to_pylist()[0] == total
    expected, counts = reference_windowed(tiny_embed_dir, [text], 48, 8, 8)
    assert counts == [8]
    engine = np.array(table.column("embedding").to_pylist()[:1], dtype=np.float32)
    assert cosine(engine, expected).min() >= 0.9999


def test_truncate_mode_reports_each_cut_row(tmp_path: Path, tiny_embed_dir: Path) -> None:
    table = _run(tmp_path, [words(5, 1), words(400, 2), None], embed_model=str(tiny_embed_dir))
    assert table.column("windows").to_pylist() == [1, 1, None]
    assert table.column("truncated").to_pylist() == [False, True, None]
    tokens = table.column("tokens").to_pylist()
    assert tokens[0] < 46 < tokens[1] and tokens[2] is None


HUGE_RUN = """
import resource, sys
from bertetl.config import EngineConfig
from bertetl.runs.enrich import enrich
src, model, out = sys.argv[1:4]
config = EngineConfig(text_column="text", embed_model=model, device="cpu", long_text="window",
                      max_batch_rows=4096, batch_tokens=65536)
report = enrich(src, out, config)
assert not report.failures, report.failures
print(report.truncated_rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_huge_rows_cost_their_windows_not_their_size(tmp_path: Path, tiny_embed_dir: Path) -> None:
    """30k rows with a 10 MB text and two 2 MB ones among them: bounded memory, and the huge
    rows get their first 64 windows without the tokenizer taking them whole (the pytest
    timeout bounds the time; the exactness of the prefix is tested above)."""
    import subprocess
    import sys

    huge = words(2_000_000, 9)[: 10 * 2**20]
    texts = [WORDS[i % len(WORDS)] for i in range(30_000)]
    texts[10], texts[15_000], texts[29_999] = huge, huge[: 2 * 2**20], huge[-2 * 2**20 :]
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"text": texts}), src, row_group_size=8192)
    out = tmp_path / "out.parquet"
    run = subprocess.run(
        [sys.executable, "-c", HUGE_RUN, str(src), str(tiny_embed_dir), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    truncated, peak = map(int, run.stdout.split()[-2:])
    assert peak < 1.5 * 2**30, f"peak RSS {peak / 2**20:.0f} MiB"
    assert truncated == 3  # each huge row needs more than 64 windows
    table = pq.read_table(out, columns=["embedding"])
    assert table.num_rows == 30_000 and table.column("embedding").null_count == 0
