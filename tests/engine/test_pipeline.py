from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import FilesFailedError, InputError
from bertetl.io.commit import LOCK_NAME
from bertetl.runs.enrich import enrich
from tests.conftest import TEXTS
from tests.reference import cosine, reference_embeddings, reference_probabilities


def _embeddings(table: pa.Table, column: str = "embedding") -> np.ndarray:
    return np.array(table.column(column).to_pylist(), dtype=np.float32)


@pytest.mark.parametrize(
    "batch_tokens,max_batch_rows,window_rows",
    [(8192, 256, 4096), (64, 3, 4), (1, 1, 1), (200, 100, 7)],
)
def test_embeddings_match_plain_transformers(
    tiny_embed_dir: Path,
    write_table,
    tmp_path: Path,
    text_table: pa.Table,
    batch_tokens: int,
    max_batch_rows: int,
    window_rows: int,
) -> None:
    src = write_table(text_table)
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        device="cpu",
        batch_tokens=batch_tokens,
        max_batch_rows=max_batch_rows,
        window_rows=window_rows,
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    expected = reference_embeddings(tiny_embed_dir, TEXTS, max_length=48)
    assert cosine(_embeddings(out), expected).min() >= 0.9999
    assert out.column("enrich_error").null_count == len(TEXTS)


def test_original_columns_rows_and_order_preserved(
    tiny_embed_dir: Path, write_table, tmp_path: Path, text_table: pa.Table
) -> None:
    table = text_table.append_column("category", pa.array(["a", "b"] * 5).dictionary_encode())
    src = write_table(table)
    enrich(src, tmp_path / "out", EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)))
    out = pq.read_table(tmp_path / "out" / src.name)
    original = pq.read_table(src)
    assert out.schema.names[: original.num_columns] == original.schema.names
    assert out.select(original.schema.names).equals(original)
    assert out.schema.names[original.num_columns :] == ["embedding", "enrich_error"]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 32)


def test_classifier_labels_match_argmax_and_scores(
    tiny_classifier_dir: Path, write_table, tmp_path: Path, text_table: pa.Table
) -> None:
    src = write_table(text_table)
    config = EngineConfig(
        text_column="text",
        classify_model=str(tiny_classifier_dir),
        include_scores=True,
        batch_tokens=100,
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    probs = reference_probabilities(tiny_classifier_dir, TEXTS, max_length=128)
    names = ["negative", "neutral", "positive"]
    assert out.column("label").to_pylist() == [names[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(out.column("score").to_numpy(), probs.max(1), atol=1e-5)
    np.testing.assert_allclose(np.array(out.column("scores").to_pylist()), probs, atol=1e-5)
    assert out.schema.field("score").type == pa.float32()


def test_multi_label_labels_above_threshold(
    tiny_multilabel_dir: Path, write_table, tmp_path: Path, text_table: pa.Table
) -> None:
    src = write_table(text_table)
    config = EngineConfig(
        text_column="text", classify_model=str(tiny_multilabel_dir), multi_label_threshold=0.5
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    probs = reference_probabilities(tiny_multilabel_dir, TEXTS, 128, multi_label=True)
    names = ["billing", "bug", "praise", "urgent"]
    expected = [[names[j] for j in np.flatnonzero(row >= 0.5)] for row in probs]
    assert out.column("labels").to_pylist() == expected
    assert any(len(labels) > 1 for labels in expected)
    assert out.schema.field("labels").type == pa.list_(pa.string())


def test_embed_and_classify_in_one_pass_with_prefix(
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
    write_table,
    tmp_path: Path,
    text_table: pa.Table,
) -> None:
    src = write_table(text_table)
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        prefix="m1_",
    )
    report = enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    assert out.schema.names[-4:] == ["m1_embedding", "m1_label", "m1_score", "m1_enrich_error"]
    assert report.rows == len(TEXTS)
    # a second model enriches the enriched table under another prefix
    enrich(tmp_path / "out", tmp_path / "out2", config.model_copy(update={"prefix": "m2_"}))
    twice = pq.read_table(tmp_path / "out2" / src.name)
    assert twice.select(out.schema.names).equals(out)
    np.testing.assert_allclose(
        _embeddings(twice, "m2_embedding"), _embeddings(out, "m1_embedding"), atol=1e-6
    )


def test_prefix_clash_is_refused_before_model_work(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    src = write_table({"text": ["a"], "embedding": [1.0]})
    with pytest.raises(InputError, match=r"already exist.*--prefix"):
        enrich(
            src, tmp_path / "out", EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
        )


def test_bad_rows_are_kept_with_enrich_error(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, write_table, tmp_path: Path
) -> None:
    texts = ["fine text", None, "", "   \n\t", "word " * 1000, "\x00\x01 control", "東京"]
    src = write_table({"id": list(range(len(texts))), "text": pa.array(texts, pa.large_string())})
    config = EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), classify_model=str(tiny_classifier_dir)
    )
    report = enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    assert out.column("id").to_pylist() == list(range(len(texts)))
    assert out.column("enrich_error").to_pylist() == [
        None,
        "text is null",
        "text is empty",
        "text is whitespace-only",
        None,
        None,
        None,
    ]
    for column in ["embedding", "label", "score"]:
        assert out.column(column).is_null().to_pylist() == [
            False,
            True,
            True,
            True,
            False,
            False,
            False,
        ]
    long_text = reference_embeddings(tiny_embed_dir, [texts[4]], max_length=48)
    assert cosine(_embeddings(out.slice(4, 1)), long_text)[0] >= 0.9999
    assert report.rows_failed == 3 and report.truncated_rows == 1


def test_partitioned_layout_is_mirrored(tiny_embed_dir: Path, write_table, tmp_path: Path) -> None:
    for i, date in enumerate(["2026-11-01", "2026-11-02", "2026-11-03"]):
        write_table({"id": [i, i + 10], "text": ["a day", "b"]}, f"src/date={date}/part-0.parquet")
    enrich(
        tmp_path / "src",
        tmp_path / "out",
        EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)),
    )
    files = sorted(
        p.relative_to(tmp_path / "out").as_posix()
        for p in (tmp_path / "out").rglob("*")
        if p.name != LOCK_NAME
    )
    assert files == [
        "date=2026-11-01",
        "date=2026-11-01/part-0.parquet",
        "date=2026-11-02",
        "date=2026-11-02/part-0.parquet",
        "date=2026-11-03",
        "date=2026-11-03/part-0.parquet",
    ]
    table = pq.read_table(tmp_path / "out")  # hive partitions come back as a column
    assert sorted(
        zip(table.column("date").to_pylist(), table.column("id").to_pylist(), strict=True)
    ) == [
        ("2026-11-01", 0),
        ("2026-11-01", 10),
        ("2026-11-02", 1),
        ("2026-11-02", 11),
        ("2026-11-03", 2),
        ("2026-11-03", 12),
    ]


def test_unreadable_files_fail_alone(tiny_embed_dir: Path, write_table, tmp_path: Path) -> None:
    write_table({"text": ["good one"]}, "src/a.parquet")
    good = write_table({"text": ["good two"] * 5000}, "src/c.parquet")
    truncated = tmp_path / "src" / "b.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "src" / "notes.parquet").write_text("this is not parquet")
    with pytest.raises(FilesFailedError) as info:
        enrich(
            tmp_path / "src",
            tmp_path / "out",
            EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)),
        )
    assert set(info.value.failures) == {str(truncated), str(tmp_path / "src" / "notes.parquet")}
    assert "b.parquet" in str(info.value)
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != LOCK_NAME)
    assert outputs == ["a.parquet", "c.parquet"]
    assert pq.read_table(tmp_path / "out" / "c.parquet").num_rows == 5000


def test_data_arrow_refuses_fails_its_file_alone(
    tiny_embed_dir: Path, write_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever else in a file's data Arrow refuses (an `ArrowInvalid` from a stage, here
    injected into the text checks for one file's text), that file fails, named; the others
    are committed and the run goes on."""
    import bertetl.engine.tokenize as tokenize

    checks = tokenize.text_problems

    def refusing(text: pa.Array) -> pa.Array:
        if "poison" in text.to_pylist():
            raise pa.ArrowInvalid("a value Arrow cannot take")
        return checks(text)

    monkeypatch.setattr(tokenize, "text_problems", refusing)
    write_table({"text": ["good one"]}, "src/a.parquet")
    bad = write_table({"text": ["fine", "poison"]}, "src/b.parquet")
    write_table({"text": ["good two"]}, "src/c.parquet")
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    with pytest.raises(FilesFailedError) as info:
        enrich(tmp_path / "src", tmp_path / "out", config)
    assert list(info.value.failures) == [str(bad)]
    assert f"{bad}: a value Arrow cannot take" in info.value.failures[str(bad)]
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != LOCK_NAME)
    assert outputs == ["a.parquet", "c.parquet"]


def test_files_bertetl_did_not_write_at_output_paths_are_refused(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    write_table({"text": ["one"]}, "src/a.parquet")
    write_table({"text": ["two"]}, "src/b.parquet")
    dest = tmp_path / "out"
    dest.mkdir()
    users = pa.table({"x": [1, 2]})
    pq.write_table(users, dest / "a.parquet")  # the user's own table, at a's output path
    (dest / "b.parquet").write_text("notes")  # not even Parquet
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    with pytest.raises(InputError, match=r"2 file\(s\) bertetl did not write .*a\.parquet"):
        enrich(tmp_path / "src", dest, config)
    assert pq.read_table(dest / "a.parquet").equals(users)
    assert (dest / "b.parquet").read_text() == "notes"
    assert sorted(p.name for p in dest.iterdir()) == ["a.parquet", "b.parquet"]  # no lock
    for name in ("a.parquet", "b.parquet"):
        (dest / name).unlink()
    enrich(tmp_path / "src", dest, config)
    enrich(tmp_path / "src", dest, config.model_copy(update={"prefix": "p_"}))  # its own: replaced
    assert pq.read_table(dest / "a.parquet").column_names[-1] == "p_enrich_error"


def test_text_with_no_tokens_is_an_outcome_not_an_output(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, write_table, tmp_path: Path
) -> None:
    """Texts of only characters the tokenizer drops (zero-width, control, format) would give
    the model just [CLS] [SEP], and every such row the same embedding and a confident label."""
    texts = ["\u200b", "\x00\x01", "\ufeff", "\u200b\u200c\u2060 \u200b", "good film"]
    src = write_table({"text": texts})
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        token_stats=True,
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    assert out.column("enrich_error").to_pylist() == ["text has no tokens"] * 4 + [None]
    for name in ("embedding", "label", "score", "tokens"):
        assert out.column(name).is_valid().to_pylist() == [False] * 4 + [True], name


def test_a_row_one_tokenizer_finds_no_tokens_in_has_no_outputs_from_any_model(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, write_table, tmp_path: Path
) -> None:
    """A lone combining accent: the embedding model's tokenizer (accents kept) gives [UNK],
    the classifier's (accents stripped) nothing. The row gets the error and no output from
    either model, not an embedding beside an error."""
    keeps_accents = tmp_path / "keeps-accents"
    shutil.copytree(tiny_embed_dir, keeps_accents)
    spec = json.loads((keeps_accents / "tokenizer.json").read_text())
    spec["normalizer"]["strip_accents"] = False
    (keeps_accents / "tokenizer.json").write_text(json.dumps(spec))
    src = write_table({"text": ["\u0301", "good film"]})
    config = EngineConfig(
        text_column="text",
        embed_model=str(keeps_accents),
        classify_model=str(tiny_classifier_dir),
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    assert out.column("enrich_error").to_pylist() == ["text has no tokens", None]
    assert out.column("embedding").is_valid().to_pylist() == [False, True]
    assert out.column("label").is_valid().to_pylist() == [False, True]


def test_missing_text_column_everywhere_fails_before_models(write_table, tmp_path: Path) -> None:
    src = write_table({"body": ["x"]})
    config = EngineConfig(text_column="text", embed_model=str(tmp_path / "no-such-model"))
    with pytest.raises(InputError, match="'text' not found; columns are: body"):
        enrich(src, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_single_file_to_parquet_dest(tiny_embed_dir: Path, write_table, tmp_path: Path) -> None:
    src = write_table({"text": ["a", "b"]})
    enrich(
        src,
        tmp_path / "result.parquet",
        EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)),
    )
    assert pq.read_table(tmp_path / "result.parquet").num_rows == 2


def test_dest_inside_source_is_refused(tiny_embed_dir: Path, write_table, tmp_path: Path) -> None:
    write_table({"text": ["a"]})
    with pytest.raises(InputError, match="inside SOURCE"):
        enrich(
            tmp_path / "src",
            tmp_path / "src" / "out",
            EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)),
        )


def test_empty_file_and_all_invalid_window(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    empty = pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())})
    write_table(empty, "src/empty.parquet")
    write_table({"id": [1, 2], "text": [None, " "]}, "src/blank.parquet")
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    report = enrich(tmp_path / "src", tmp_path / "out", config)
    assert pq.read_table(tmp_path / "out" / "empty.parquet").num_rows == 0
    assert pq.read_table(tmp_path / "out" / "empty.parquet").schema.names == [
        "id",
        "text",
        "embedding",
        "enrich_error",
    ]
    blank = pq.read_table(tmp_path / "out" / "blank.parquet")
    assert blank.column("embedding").null_count == 2
    assert blank.column("enrich_error").to_pylist() == ["text is null", "text is whitespace-only"]
    assert report.rows == 2 and report.rows_failed == 2


def test_schema_drift_between_files_keeps_each_files_schema(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    write_table(pa.table({"text": pa.array(["a"], pa.string())}), "src/a.parquet")
    write_table(
        pa.table({"text": pa.array(["b"], pa.large_string()), "extra": [1]}), "src/b.parquet"
    )
    enrich(
        tmp_path / "src",
        tmp_path / "out",
        EngineConfig(text_column="text", embed_model=str(tiny_embed_dir)),
    )
    a = pq.read_schema(tmp_path / "out" / "a.parquet")
    b = pq.read_schema(tmp_path / "out" / "b.parquet")
    assert a.names == ["text", "embedding", "enrich_error"] and a.field("text").type == pa.string()
    assert b.names == ["text", "extra", "embedding", "enrich_error"]
    assert b.field("text").type == pa.large_string()


def test_partitions_enriched_one_at_a_time_do_not_overwrite_each_other(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    for date in ["2026-11-01", "2026-11-02"]:
        path = write_table({"text": [date]}, f"src/date={date}/part-0.parquet")
        enrich(path, tmp_path / "out", config)
    table = pq.read_table(tmp_path / "out")
    assert sorted(table.column("date").to_pylist()) == ["2026-11-01", "2026-11-02"]
    assert sorted(table.column("text").to_pylist()) == ["2026-11-01", "2026-11-02"]


def test_glob_dest_inside_source_is_refused(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    write_table({"text": ["a"]}, "src/a/x.parquet")
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    with pytest.raises(InputError, match="inside SOURCE"):
        enrich(str(tmp_path / "src" / "**" / "*.parquet"), tmp_path / "src" / "out", config)


def test_column_clash_names_the_file(tiny_embed_dir: Path, write_table, tmp_path: Path) -> None:
    path = write_table({"text": ["a"], "enrich_error": ["x"]})
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    with pytest.raises(InputError, match=f"{path}: output column"):
        enrich(path, tmp_path / "out", config)


def test_two_worker_processes_match_one(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, write_table, tmp_path: Path
) -> None:
    for i in range(4):
        write_table(
            {"id": [i, i + 10, i + 20], "text": [f"text {i}", None, TEXTS[i]]},
            f"src/date=2026-11-0{i + 1}/part-0.parquet",
        )
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        device="cpu",
    )
    one = enrich(tmp_path / "src", tmp_path / "one", config)
    two = enrich(tmp_path / "src", tmp_path / "two", config.model_copy(update={"workers": 2}))
    assert two.rows == one.rows == 12 and two.rows_failed == one.rows_failed == 4
    assert two.label_counts == one.label_counts
    assert two.stages["embed"].real_tokens == one.stages["embed"].real_tokens
    a, b = pq.read_table(tmp_path / "one"), pq.read_table(tmp_path / "two")
    assert a.drop_columns(["embedding", "score"]).equals(b.drop_columns(["embedding", "score"]))
    embedded = pc.is_valid(a.column("embedding"))
    np.testing.assert_allclose(
        _embeddings(a.filter(embedded)), _embeddings(b.filter(embedded)), atol=1e-5
    )


def test_models_with_the_same_tokenizer_share_one_tokenization(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, tmp_path: Path
) -> None:
    from bertetl.engine.pipeline import Pipeline
    from tests.conftest import with_other_vocab

    # a classifier whose vocab comes from other texts, so its ids differ: two passes
    other = with_other_vocab(tiny_classifier_dir, tmp_path / "other")
    both = {"embed_model": str(tiny_embed_dir), "classify_model": str(other)}
    assert len(Pipeline(EngineConfig(text_column="text", max_length=32, **both)).tokenizers) == 2
    # a classifier carrying the embedding model's tokenizer (as a fine-tune of it does)
    same = {"embed_model": str(tiny_embed_dir), "classify_model": str(tiny_classifier_dir)}
    shared = Pipeline(EngineConfig(text_column="text", max_length=32, **same))
    assert len(shared.tokenizers) == 1
    assert shared.models[0].tokens_column == shared.models[1].tokens_column
    # but not when their max lengths differ (48 from sentence_bert_config vs 128)
    assert len(Pipeline(EngineConfig(text_column="text", **same)).tokenizers) == 2


def test_writing_behind_the_models_changes_nothing_in_the_output(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, write_table, tmp_path: Path
) -> None:
    """The models in a thread ahead of the writer (the default) against models and writer
    taking turns on one thread: the same files, byte for byte in every column."""
    texts = [TEXTS[i % len(TEXTS)] + f" {i}" if i % 7 else None for i in range(90)]
    write_table({"id": list(range(90)), "text": texts})
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        window_rows=8,
        device="cpu",
    )
    assert config.write_behind_windows > 0
    behind = enrich(tmp_path / "src", tmp_path / "behind", config)
    inline = enrich(
        tmp_path / "src", tmp_path / "inline", config.model_copy(update={"write_behind_windows": 0})
    )
    assert behind.rows == inline.rows == 90 and behind.rows_failed == inline.rows_failed
    assert behind.label_counts == inline.label_counts
    assert pq.read_table(tmp_path / "behind").equals(pq.read_table(tmp_path / "inline"))


def test_a_failed_write_stops_the_models_thread_and_commits_nothing(
    tiny_embed_dir: Path, write_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer fails on its third window while the models run ahead: the file fails alone,
    nothing of it is committed, and no models' thread is left running."""
    import threading

    from bertetl.io import write

    write_table({"id": list(range(80)), "text": [f"row {i} of text" for i in range(80)]})
    real_write, calls = write.ParquetSink.write, []

    def failing_write(self, batch):
        calls.append(batch.num_rows)
        if len(calls) == 3:
            raise InputError("disk said no")
        return real_write(self, batch)

    monkeypatch.setattr(write.ParquetSink, "write", failing_write)
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), window_rows=8)
    before = set(threading.enumerate())  # another test's, in this worker, are not this one's
    report = enrich(tmp_path / "src", tmp_path / "out", config, raise_on_failure=False)
    (failure,) = report.failures.values()
    assert "disk said no" in failure and len(calls) == 3
    assert not list((tmp_path / "out").glob("*.parquet"))
    assert not [t for t in set(threading.enumerate()) - before if t.name == "bertetl-prefetch"]
