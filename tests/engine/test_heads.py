"""Several heads in one pass: each head's columns equal the head run alone; today's flags keep
today's column names; label counts per head; a classifier of the wrong kind is refused."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.engine.pipeline import Pipeline
from bertetl.errors import ModelError
from bertetl.runs.enrich import enrich


def _run(src: Path, dest: Path, **options: object) -> tuple[pa.Table, dict]:
    config = EngineConfig(text_column="text", include_scores=True, batch_tokens=150, **options)
    result = enrich(src, dest, config)
    return pq.read_table(dest / src.name), result.label_counts


def test_several_heads_equal_each_head_alone(
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
    tiny_multilabel_dir: Path,
    write_table,
    text_table: pa.Table,
    tmp_path: Path,
) -> None:
    src = write_table(text_table)
    heads = {
        "classify": [f"sentiment={tiny_classifier_dir}", f"topic={tiny_multilabel_dir}"],
        "zero_shot": ["intent=good,bad,data"],
    }
    both, counts = _run(
        src,
        tmp_path / "all",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        zero_shot_min_score=0.5,
        **heads,
    )
    alone = {
        "embedding": _run(src, tmp_path / "e", embed_model=str(tiny_embed_dir))[0],
        "": _run(src, tmp_path / "c", classify_model=str(tiny_classifier_dir))[0],
        "sentiment_": _run(src, tmp_path / "s", classify=heads["classify"][:1])[0],
        "topic_": _run(src, tmp_path / "t", classify=heads["classify"][1:])[0],
        "intent_": _run(
            src,
            tmp_path / "i",
            embed_model=str(tiny_embed_dir),
            zero_shot=heads["zero_shot"],
            zero_shot_min_score=0.5,
        )[0],
    }
    original = text_table.schema.names
    assert both.schema.names[len(original) :] == [
        "embedding",
        *("label", "score", "scores"),
        *("sentiment_label", "sentiment_score", "sentiment_scores"),
        *("topic_label", "topic_score", "topic_scores", "topic_labels"),
        *("intent_label", "intent_score", "intent_scores"),
        "enrich_error",
    ]
    for prefix, table in alone.items():
        added = [name for name in table.schema.names[len(original) :] if name != "enrich_error"]
        assert any(name.startswith(prefix) for name in added), prefix
        for name in added:
            assert both.column(name).equals(table.column(name)), name
            assert both.schema.field(name).equals(table.schema.field(name), check_metadata=True)
    # the unnamed classifier and the same model as a named head agree, under today's names
    assert both.column("label").equals(both.column("sentiment_label"))
    assert set(counts) == {"label", "sentiment_label", "topic_label", "intent_label"}
    for column, tally in counts.items():
        assert sum(tally.values()) == len(both) - both.column(column).null_count
        assert tally == {
            row["values"]: row["counts"]
            for row in pc.value_counts(both.column(column)).to_pylist()
            if row["values"] is not None
        }


def test_heads_share_one_tokenization_and_take_the_prefix(
    tiny_embed_dir: Path, tiny_classifier_dir: Path, tiny_multilabel_dir: Path, tmp_path: Path
) -> None:
    from tests.conftest import with_other_vocab

    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify=[f"a={tiny_classifier_dir}", f"b={tiny_multilabel_dir}"],
        zero_shot=["c=x,y"],
        prefix="v2_",
    )
    pipeline = Pipeline(config)
    # the embedding model's (48 tokens, zero-shot rides on it) and one for both heads: the
    # heads have the same vocab and length, so the texts are not tokenized twice for them
    assert len(pipeline.tokenizers) == 2
    other = with_other_vocab(tiny_multilabel_dir, tmp_path / "other-vocab")
    apart = EngineConfig(
        **config.model_dump(exclude={"classify"}),
        classify=[f"a={tiny_classifier_dir}", f"b={other}"],
    )
    assert len(Pipeline(apart).tokenizers) == 3  # a head with its own vocab: its own pass
    assert [f.name for f in pipeline.added_fields()] == [
        "v2_embedding",
        "v2_a_label",
        "v2_a_score",
        "v2_b_label",
        "v2_b_score",
        "v2_b_labels",
        "v2_c_label",
        "v2_c_score",
        "v2_enrich_error",
    ]
    assert pipeline.label_columns() == ["v2_a_label", "v2_b_label", "v2_c_label"]
    assert [stage.name for stage in pipeline.models] == [
        "embed",
        "classify:a",
        "classify:b",
        "zero_shot:c",
    ]


@pytest.mark.parametrize("option", ["classify_model", "classify"])
def test_a_token_classifier_given_as_classifier_is_refused_before_model_work(
    tiny_token_classifier_dir: Path, tiny_embed_dir: Path, monkeypatch, option: str
) -> None:
    import bertetl.engine.encoders as encoders

    monkeypatch.setattr(encoders, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    value = f"ner={tiny_token_classifier_dir}" if option == "classify" else None
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        **{option: [value] if value else str(tiny_token_classifier_dir)},
    )
    with pytest.raises(ModelError, match="is a token-classification model") as raised:
        Pipeline(config)
    assert "\n" not in str(raised.value)


def test_cli_runs_repeated_heads_and_refuses_a_token_classifier(
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
    tiny_token_classifier_dir: Path,
    write_table,
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from bertetl.cli import app

    src = write_table({"text": ["good film", "bad film", None]})
    args = ["enrich", str(src), str(tmp_path / "out"), "--text-column", "text"]
    args += ["--embed-model", str(tiny_embed_dir), "--zero-shot", "good,bad"]
    args += ["--classify", f"a={tiny_classifier_dir}", "--zero-shot", "z=x,y"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    out = pq.read_table(tmp_path / "out" / src.name)
    assert out.schema.names == [
        *("text", "embedding", "a_label", "a_score", "label", "score"),
        *("z_label", "z_score", "enrich_error"),
    ]
    bad = [*args[:5], "--classify", f"ner={tiny_token_classifier_dir}"]
    result = CliRunner().invoke(app, [*bad[:2], str(tmp_path / "bad"), *bad[3:]])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "token-classification model" in lines[0], result.stderr
    assert "--ner NAME=DIR" in lines[0]


def test_an_ner_head_in_the_same_pass_equals_it_alone(
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
    tiny_token_classifier_dir: Path,
    write_table,
    text_table: pa.Table,
    tmp_path: Path,
) -> None:
    """`--ner` beside an embedding and a classifier: its entities (and redacted text) equal an
    NER-only run's, and the other heads' columns equal theirs without it."""
    src = write_table(text_table)
    ner = {"ner": [f"people={tiny_token_classifier_dir}"], "redact": True}
    both, _ = _run(
        src,
        tmp_path / "all",
        embed_model=str(tiny_embed_dir),
        classify=[f"sentiment={tiny_classifier_dir}"],
        **ner,
    )
    alone, _ = _run(src, tmp_path / "ner", **ner)
    others, _ = _run(
        src,
        tmp_path / "others",
        embed_model=str(tiny_embed_dir),
        classify=[f"sentiment={tiny_classifier_dir}"],
    )
    added = both.schema.names[len(text_table.schema.names) :]
    assert added[-3:] == ["people_entities", "people_redacted", "enrich_error"]
    for name in ("people_entities", "people_redacted", "enrich_error"):
        assert both.column(name).equals(alone.column(name)), name
    for name in others.schema.names:
        assert both.column(name).equals(others.column(name)), name
    entities = [e for row in both.column("people_entities").to_pylist() if row for e in row]
    assert entities, "the random tagger finds some entities in these texts"
    texts = both.column("text").to_pylist()
    for row, found in zip(texts, both.column("people_entities").to_pylist(), strict=True):
        for entity in found or []:
            assert row[entity["start"] : entity["end"]] == entity["text"]


def test_a_sequence_classifier_given_as_ner_is_refused_and_ner_options_need_ner(
    tiny_classifier_dir: Path, tiny_token_classifier_dir: Path, monkeypatch
) -> None:
    import bertetl.engine.ner as ner

    monkeypatch.setattr(ner, "load_runtime_model", lambda *a, **k: pytest.fail("loaded"))
    config = EngineConfig(text_column="text", ner=[f"people={tiny_classifier_dir}"])
    with pytest.raises(ModelError, match="not a token-classification") as raised:
        Pipeline(config)
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="need --ner"):
        EngineConfig(text_column="text", embed_model="minilm", redact=True)
    with pytest.raises(ValueError, match="NAME=DIR"):
        EngineConfig(text_column="text", ner=[str(tiny_token_classifier_dir)])
    with pytest.raises(ValueError, match="given twice"):
        EngineConfig(
            text_column="text",
            classify=[f"x={tiny_classifier_dir}"],
            ner=[f"x={tiny_token_classifier_dir}"],
        )
