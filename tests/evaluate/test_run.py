"""`evaluate()` end to end with the tiny models: the model run through the engine agrees with
the same table's enriched predictions, labels are checked before any model work, and OUT is
written whole or not at all."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from bertetl.config import EngineConfig
from bertetl.errors import InputError
from bertetl.evaluate.config import EvaluateConfig
from bertetl.evaluate.run import evaluate
from bertetl.runs.enrich import enrich
from tests.conftest import TEXTS

SENTIMENT = ["negative", "neutral", "positive"]
TOPICS = ["billing", "bug", "praise", "urgent"]


def _labelled(multi_label: bool) -> pa.Table:
    texts: list[str | None] = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(30)]
    texts[4] = None  # an enrich_error row: no prediction
    if multi_label:
        labels = [[TOPICS[i % 4]] + ([TOPICS[(i + 1) % 4]] if i % 3 else []) for i in range(30)]
        column = pa.array(labels, pa.list_(pa.string()))
    else:
        column = pa.array([SENTIMENT[i % 3] if i != 9 else None for i in range(30)])
    return pa.table({"id": list(range(30)), "text": texts, "y": column})


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_classify_model_and_predictions_agree(
    multi_label: bool, tiny_classifier_dir, tiny_multilabel_dir, write_table, tmp_path
) -> None:
    model = tiny_multilabel_dir if multi_label else tiny_classifier_dir
    write_table(_labelled(multi_label), "src/part-0.parquet", row_group_size=8)
    engine = EngineConfig(
        text_column="text", classify_model=str(model), device="cpu", batch_tokens=128
    )
    ran = evaluate(
        tmp_path / "src", tmp_path / "ran", EvaluateConfig(label_column="y", engine=engine)
    )

    enrich(
        tmp_path / "src", tmp_path / "enriched", engine.model_copy(update={"include_scores": True})
    )
    read = evaluate(
        tmp_path / "enriched",
        tmp_path / "read",
        EvaluateConfig(label_column="y", text_column="text"),
    )
    assert ran.metrics["about"]["model"] == str(model) and read.metrics["about"]["model"] is None
    for metrics in (ran.metrics, read.metrics):
        del metrics["about"]
    assert ran.metrics == read.metrics
    rows = ran.metrics["rows"]
    assert (rows["total"], rows["without_prediction"]) == (30, 1)
    assert rows["without_label"] == (0 if multi_label else 1)
    assert ran.metrics["labels"] == (TOPICS if multi_label else SENTIMENT)
    written = sorted(p.name for p in (tmp_path / "ran").iterdir())
    assert written == sorted(ran.files)  # nothing else: the staged predictions are gone
    assert {"metrics.json", "report.html", "confusion_matrix.png", "roc_curves.png"} <= set(written)
    for png in (tmp_path / "ran").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((tmp_path / "ran" / "metrics.json").read_text())
    assert on_disk["accuracy"] == ran.metrics["accuracy"]
    assert not list(tmp_path.glob(".ran*"))  # no staging left beside OUT


def test_unknown_labels_fail_before_any_model_work(
    tiny_classifier_dir, write_table, tmp_path, monkeypatch
) -> None:
    import bertetl.runs.enrich

    def no_model_work(*args, **kwargs):
        raise AssertionError("the model ran before the labels were checked")

    monkeypatch.setattr(bertetl.runs.enrich, "enrich", no_model_work)
    write_table({"text": ["good", "bad", "meh"], "y": ["positive", "awful", "so-so"]})
    engine = EngineConfig(text_column="text", classify_model=str(tiny_classifier_dir))
    with pytest.raises(InputError, match=r"2 label\(s\) the model does not know: 'awful', 'so-so'"):
        evaluate(
            tmp_path / "src", tmp_path / "out", EvaluateConfig(label_column="y", engine=engine)
        )
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_out_must_be_new_empty_or_an_earlier_evaluation(write_table, tmp_path) -> None:
    from tests.evaluate.tables import single_label_table

    write_table(single_label_table(["neg", "pos"] * 5, ["neg", "pos"]))
    config = EvaluateConfig(label_column="y", text_column="text")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no evaluation"):
        evaluate(tmp_path / "src", tmp_path / "busy", config)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="lies inside TABLE"):
        evaluate(tmp_path / "src", tmp_path / "src" / "eval", config)
    first = evaluate(tmp_path / "src", tmp_path / "eval", config)
    (tmp_path / "eval" / "stale.png").write_bytes(b"old")
    again = evaluate(tmp_path / "src", tmp_path / "eval", config)  # replaced whole
    assert again.metrics == first.metrics
    assert not (tmp_path / "eval" / "stale.png").exists()


def test_an_earlier_evaluation_holding_a_users_file_is_refused_not_deleted(
    write_table, tmp_path
) -> None:
    """--out is replaced whole: an earlier evaluation to which a user added a file is refused,
    naming it, and the file is kept (it was deleted with exit 0)."""
    from tests.evaluate.tables import single_label_table

    write_table(single_label_table(["neg", "pos"] * 5, ["neg", "pos"]))
    config = EvaluateConfig(label_column="y", text_column="text")
    evaluate(tmp_path / "src", tmp_path / "eval", config)
    (tmp_path / "eval" / "my-notes.md").write_text("what I saw")
    with pytest.raises(InputError, match=r"holds 1 file\(s\) an earlier evaluation does not"):
        evaluate(tmp_path / "src", tmp_path / "eval", config)
    assert (tmp_path / "eval" / "my-notes.md").read_text() == "what I saw"
