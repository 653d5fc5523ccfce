"""Zero-shot heads: scores against sentence-transformers, no extra pass over rows when the
embedding model is shared, the label file checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from bertetl.config import EngineConfig
from bertetl.errors import ConfigError
from bertetl.labels import read_labels
from bertetl.runs.enrich import enrich
from tests.conftest import TEXTS

LABELS = {
    "praise": ["a movie that was good and fun", "lovely"],
    "complaint": ["a terrible boring bad film"],
    "data": ["parquet tables of reviews and tickets", "embedding columns", "numbers"],
}


def reference_zero_shot(
    model_dir: Path,
    texts: list[str],
    labels: dict[str, list[str]],
    template: str | None,
    temperature: float,
) -> np.ndarray:
    """sentence-transformers `encode` of the rows and the descriptions; each label's vector
    the normalised mean of its descriptions'; softmax(cosine / temperature)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    rows = model.encode(texts, convert_to_numpy=True).astype(np.float64)
    vectors = []
    for descriptions in labels.values():
        texts_ = [template.replace("{}", d) if template else d for d in descriptions]
        mean = model.encode(texts_, convert_to_numpy=True).astype(np.float64).mean(axis=0)
        vectors.append(mean / np.linalg.norm(mean))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    logits = rows @ np.stack(vectors).T / temperature
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture
def label_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.yaml"
    path.write_text(
        "".join(
            f"{label}:\n" + "".join(f"  - {d}\n" for d in descriptions)
            for label, descriptions in LABELS.items()
        )
    )
    return path


@pytest.mark.parametrize(
    "template,temperature,min_score", [(None, 0.05, False), ("a review: {}", 0.01, True)]
)
def test_scores_match_sentence_transformers(
    tiny_embed_dir: Path,
    label_file: Path,
    write_table,
    text_table: pa.Table,
    tmp_path: Path,
    template: str | None,
    temperature: float,
    min_score: bool,
) -> None:
    src = write_table(text_table)
    expected = reference_zero_shot(tiny_embed_dir, TEXTS, LABELS, template, temperature)
    # with a min score: the median best score, so some labels are null and some are not
    threshold = float(np.median(expected.max(1))) if min_score else None
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        zero_shot=[str(label_file)],
        zero_shot_template=template,
        zero_shot_temperature=temperature,
        zero_shot_min_score=threshold,
        include_scores=True,
        device="cpu",
        batch_tokens=200,
    )
    result = enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    names = list(LABELS)
    assert out.schema.names[-5:] == ["embedding", "label", "score", "scores", "enrich_error"]
    assert json.loads(out.schema.field("scores").metadata[b"labels"]) == names
    scores = np.array(out.column("scores").to_pylist())
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.column("score").to_numpy(), expected.max(1), atol=1e-5)
    best = [names[i] for i in expected.argmax(1)]
    if threshold is not None:
        kept = out.column("score").to_numpy() >= threshold
        assert 0 < kept.sum() < len(kept)
        best = [b if keep else None for b, keep in zip(best, kept, strict=True)]
    assert out.column("label").to_pylist() == best
    counts = {name: best.count(name) for name in names if best.count(name)}
    assert result.label_counts == {"label": counts}


def _count_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of BertModel.forward (every forward pass of an embedding model)."""
    from transformers.models.bert.modeling_bert import BertModel

    calls = [0]
    original = BertModel.forward

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", counted)
    return calls


def test_no_second_pass_over_rows_when_the_embed_model_is_shared(
    tiny_embed_dir: Path, write_table, text_table: pa.Table, tmp_path: Path, monkeypatch
) -> None:
    src = write_table(text_table)
    calls = _count_forwards(monkeypatch)
    embed = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), batch_tokens=100)
    enrich(src, tmp_path / "embed", embed)
    embed_only = calls[0]
    assert embed_only > 2, "several row batches, so a second pass would show"
    calls[0] = 0
    heads = EngineConfig(
        **embed.model_dump(exclude={"zero_shot"}), zero_shot=["a,b,c", "topic=x,y"]
    )
    enrich(src, tmp_path / "heads", heads)
    # one forward per head for its label descriptions (in setup), none more over rows
    assert calls[0] == embed_only + 2
    one = pq.read_table(tmp_path / "embed" / src.name)
    two = pq.read_table(tmp_path / "heads" / src.name)
    assert two.column("embedding").equals(one.column("embedding"))
    assert {"label", "topic_label"} <= set(two.schema.names)


def test_a_separate_zero_shot_model_labels_as_if_it_were_the_embed_model(
    tiny_embed_dir: Path, tiny_base_dir: Path, write_table, text_table: pa.Table, tmp_path: Path
) -> None:
    """--zero-shot-model runs its own pass and writes no embedding of its own; its labels
    are those of the same model given as --embed-model (checked against
    sentence-transformers above)."""
    src = write_table(text_table)
    common = {"text_column": "text", "zero_shot": ["good,bad,data"], "include_scores": True}
    separate = EngineConfig(
        embed_model=str(tiny_embed_dir), zero_shot_model=str(tiny_base_dir), **common
    )
    shared = EngineConfig(embed_model=str(tiny_base_dir), **common)
    report = enrich(src, tmp_path / "separate", separate)
    enrich(src, tmp_path / "shared", shared)
    one = pq.read_table(tmp_path / "separate" / src.name)
    two = pq.read_table(tmp_path / "shared" / src.name)
    assert one.schema.names[-5:] == ["embedding", "label", "score", "scores", "enrich_error"]
    assert one.column("label").equals(two.column("label"))
    np.testing.assert_allclose(
        np.array(one.column("scores").to_pylist()),
        np.array(two.column("scores").to_pylist()),
        atol=1e-6,
    )
    assert report.stages["zero_shot_embed"].rows == len(TEXTS)


def test_null_and_blank_rows_get_no_label(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    src = write_table({"text": ["good film", None, "  ", "bad"]})
    config = EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), zero_shot=["z=good,bad"]
    )
    enrich(src, tmp_path / "out", config)
    out = pq.read_table(tmp_path / "out" / src.name)
    assert out.column("z_label").is_null().to_pylist() == [False, True, True, False]
    assert out.column("z_score").is_null().to_pylist() == [False, True, True, False]


# -- label sets: what is read, and what is refused before any model work --------------------


def test_label_files_and_lists_resolve_into_the_config(tmp_path: Path) -> None:
    yaml_file = tmp_path / "labels.yml"
    yaml_file.write_text("yes: [agrees, says yes]\nno: disagrees\n'3': three\n")
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({"yes": ["agrees", "says yes"], "no": "disagrees"}))
    assert [(x.name, x.descriptions) for x in read_labels(str(yaml_file))] == [
        ("yes", ("agrees", "says yes")),
        ("no", ("disagrees",)),
        ("3", ("three",)),
    ]
    assert [(x.name, x.descriptions) for x in read_labels(str(json_file))][1] == (
        "no",
        ("disagrees",),
    )
    assert [(x.name, x.descriptions) for x in read_labels(" a , b ")] == [
        ("a", ("a",)),
        ("b", ("b",)),
    ]
    config = EngineConfig(text_column="t", embed_model="m", zero_shot=[f"intent={json_file}"])
    before = config.model_dump_json()
    assert EngineConfig.model_validate_json(before) == config  # resolved once, no file needed
    json_file.write_text(json.dumps({"yes": ["agrees"], "no": "disagrees"}))
    edited = EngineConfig(text_column="t", embed_model="m", zero_shot=[f"intent={json_file}"])
    assert edited.model_dump_json() != before  # an edited description is another config


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        ("a: x\nb: y\na: z\n", ".yaml", "lists label(s) 'a' twice"),
        ('{"a": "x", "b": "y", "a": "z"}', ".json", "lists label(s) 'a' twice"),
        ("a: x\nb: ''\n", ".yaml", "label 'b' has an empty description"),
        ("a: x\nb:\n", ".yaml", "label 'b' has an empty description"),
        ('{"a": "x", "b": []}', ".json", "label 'b' has an empty description"),
        ('{"a": "x", "b": ["  "]}', ".json", "label 'b' has an empty description"),
        ('{"a": "x", "b": [1]}', ".json", "descriptions must be text"),
        ("a: x\n  b: [\n", ".yaml", "not valid YAML"),
        ("{", ".json", "label file"),
        ("a: x\n", ".yaml", "at least two labels"),
    ],
)
def test_bad_label_files_are_one_line_errors(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"labels{suffix}"
    path.write_text(content)
    with pytest.raises(ValidationError) as raised:
        EngineConfig(text_column="t", embed_model="m", zero_shot=[str(path)])
    error = raised.value.errors()[0]
    assert error["loc"] == ("zero_shot",)
    assert message in error["msg"] and "\n" not in error["msg"]
    assert isinstance(error["ctx"]["error"], ConfigError)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"zero_shot": ["a,b,a"]}, "duplicate label(s) 'a'"),
        ({"zero_shot": ["a,,b"]}, "empty label"),
        ({"zero_shot": ["missing.yaml"]}, "cannot read the label file"),
        ({"zero_shot": ["a,b", "c,d"]}, "the unnamed head (label, score) is given twice"),
        ({"zero_shot": ["x=a,b"], "classify": ["x=dir"]}, "head name 'x' is given twice"),
        ({"zero_shot": ["a,b"], "classify_model": "dir"}, "unnamed head"),
        ({"zero_shot": ["a,b"], "embed_model": None, "classify_model": "d"}, "embedding model"),
        ({"zero_shot_template": "about {}"}, "need(s) --zero-shot"),
        ({"zero_shot": ["a,b"], "zero_shot_template": "about"}, "has no {}"),
        ({"classify": ["some/dir"]}, "give NAME=DIR"),
    ],
)
def test_bad_head_options_are_refused(options: dict, message: str) -> None:
    values = {"text_column": "t", "embed_model": "m", **options}
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EngineConfig(**values)


def test_cli_bad_label_file_is_one_line_before_model_work(
    tiny_embed_dir: Path, write_table, tmp_path: Path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    import bertetl.engine.encoders as encoders
    from bertetl.cli import app

    monkeypatch.setattr(encoders, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    src = write_table({"text": ["a"]})
    labels = tmp_path / "labels.yaml"
    labels.write_text("a: x\na: y\n")
    args = ["enrich", str(src), str(tmp_path / "out"), "--text-column", "text"]
    args += ["--embed-model", str(tiny_embed_dir), "--zero-shot", f"intent={labels}"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --zero-shot: ")
    assert "twice" in lines[0] and str(labels) in lines[0]
    assert not (tmp_path / "out").exists()
