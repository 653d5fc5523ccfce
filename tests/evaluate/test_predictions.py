"""Reading true labels and predictions from Parquet: rows kept and counted, label types,
several files, and the one-line errors for tables that cannot be evaluated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.errors import InputError
from bertetl.evaluate.predictions import check_truth, read_predictions
from bertetl.io.read import discover
from tests.evaluate.tables import multi_label_table, single_label_table

LABELS = ["neg", "pos"]


def read(folder: Path, text: str | None = "text"):
    return read_predictions(str(folder), discover(folder), "y", "", text)


def write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_several_files_keep_their_rows_and_texts(tmp_path: Path) -> None:
    first = single_label_table(["neg", "pos", None, "pos"], LABELS, seed=1, missing={3})
    second = single_label_table(["pos", "neg", "neg"], LABELS, seed=2)
    write(first, tmp_path / "t" / "date=1" / "part-0.parquet")
    write(second, tmp_path / "t" / "date=2" / "part-0.parquet")
    predictions = read(tmp_path / "t")
    assert (predictions.rows_total, predictions.rows) == (7, 5)
    assert (predictions.rows_without_label, predictions.rows_without_prediction) == (1, 1)
    assert predictions.sources == ["date=1/part-0.parquet", "date=2/part-0.parquet"]
    assert predictions.file_index.tolist() == [0, 0, 1, 1, 1]
    assert predictions.row.tolist() == [0, 1, 0, 1, 2]
    assert predictions.truth.tolist() == [0, 1, 1, 0, 0]
    assert predictions.texts(np.array([4, 1])) == [
        second["text"][2].as_py(),
        first["text"][1].as_py(),
    ]
    assert predictions.scores.shape == (5, 2)


@pytest.mark.parametrize(
    "values",
    [
        pa.array([0, 1, 1, 0]),
        pa.array([0, 1, 1, 0]).cast(pa.int8()).dictionary_encode(),
        pa.array(["0", "1", "1", "0"]).dictionary_encode(),
    ],
    ids=["integers", "integer-dictionary", "string-dictionary"],
)
def test_integer_and_dictionary_labels_compare_as_text(tmp_path: Path, values) -> None:
    table = single_label_table(["0", "1", "1", "0"], ["0", "1"])
    table = table.set_column(1, "y", values)
    write(table, tmp_path / "t" / "part-0.parquet")
    assert read(tmp_path / "t").truth.tolist() == [0, 1, 1, 0]


def test_labels_the_model_lacks_are_named(tmp_path: Path) -> None:
    table = single_label_table(["neg", "pos", "meh", "huh", "pos"], LABELS)
    write(table, tmp_path / "t" / "part-0.parquet")
    with pytest.raises(InputError, match=r"2 label\(s\) the model does not know: 'huh', 'meh'"):
        read(tmp_path / "t")
    files = discover(tmp_path / "t")
    with pytest.raises(InputError, match=r"the model's labels: neg, pos"):
        check_truth("t", files, "y", LABELS, multi_label=False)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    table = single_label_table(["neg", "pos"], LABELS)
    write(table.drop_columns(["y"]), tmp_path / "a" / "part-0.parquet")
    with pytest.raises(InputError, match=r"label column 'y' not found; columns are: text, label"):
        read(tmp_path / "a")
    write(table.drop_columns(["label"]), tmp_path / "b" / "part-0.parquet")
    with pytest.raises(InputError, match=r"prediction column 'label' not found.*--classify-model"):
        read(tmp_path / "b")
    write(table, tmp_path / "c" / "part-0.parquet")
    with pytest.raises(InputError, match=r"text column 'body' not found"):
        read(tmp_path / "c", text="body")


def test_list_labels_need_a_multi_label_model_and_back(tmp_path: Path) -> None:
    single = single_label_table(["neg", "pos"], LABELS)
    write(single.set_column(1, "y", pa.array([["neg"], ["pos"]])), tmp_path / "a" / "p.parquet")
    with pytest.raises(InputError, match=r"holds lists \(multi-label\) but the model is single"):
        read(tmp_path / "a")
    multi = multi_label_table([["neg"], ["pos"]], LABELS)
    write(multi.set_column(1, "y", pa.array(["neg", "pos"])), tmp_path / "b" / "p.parquet")
    with pytest.raises(InputError, match="model is multi-label but label column 'y' holds one"):
        read(tmp_path / "b")


def test_a_table_with_nothing_to_evaluate_is_an_error(tmp_path: Path) -> None:
    empty = single_label_table([], LABELS)
    write(empty, tmp_path / "empty" / "p.parquet")
    with pytest.raises(InputError, match=r"nothing to evaluate: of 0 row\(s\)"):
        read(tmp_path / "empty")
    unlabelled = single_label_table([None, None], LABELS)
    write(unlabelled, tmp_path / "unlabelled" / "p.parquet")
    with pytest.raises(InputError, match=r"of 2 row\(s\), 2 have no label in 'y'"):
        read(tmp_path / "unlabelled")
    with pytest.raises(InputError, match="no row has a label in 'y'"):
        check_truth("t", discover(tmp_path / "unlabelled"), "y", LABELS, multi_label=False)


def test_a_label_column_of_another_type_is_refused(tmp_path: Path) -> None:
    table = single_label_table(["neg", "pos"], LABELS).set_column(1, "y", pa.array([0.5, 1.5]))
    write(table, tmp_path / "t" / "p.parquet")
    with pytest.raises(InputError, match="label column 'y' has type double"):
        read(tmp_path / "t")


def test_a_label_column_named_like_a_prediction_column_is_refused(tmp_path: Path) -> None:
    table = single_label_table(["neg", "pos"], LABELS)
    write(table, tmp_path / "t" / "p.parquet")
    with pytest.raises(InputError, match="label column 'label' is also where the predictions"):
        read_predictions("t", discover(tmp_path / "t"), "label", "", "text")
    prefixed = table.rename_columns(["text", "label", "p_label", "p_score", "p_scores"])
    write(prefixed, tmp_path / "p" / "p.parquet")
    predictions = read_predictions("p", discover(tmp_path / "p"), "label", "p_", "text")
    assert predictions.labels == LABELS and predictions.rows == 2


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), 2.0, -1.0], ids=["nan", "inf", "above-1", "below-0"]
)
@pytest.mark.parametrize("column", ["score", "scores"])
def test_scores_that_are_not_numbers_are_one_line_naming_the_rows(
    tmp_path: Path, bad: float, column: str
) -> None:
    """A NaN or infinite score on a predicted row (a hand-edited table) is an `InputError`
    naming the file, column and row, not a 61-line traceback from scikit-learn."""
    table = single_label_table(["neg", "pos", "pos", "neg"], LABELS, seed=3)
    if column == "score":
        values = table["score"].to_pylist()
        values[2] = bad
        table = table.set_column(table.schema.get_field_index("score"), "score", pa.array(values))
    else:
        rows = table["scores"].to_pylist()
        rows[2] = [bad, 0.5]
        index = table.schema.get_field_index("scores")
        table = table.set_column(
            index, table.schema.field(index), pa.array(rows, table["scores"].type)
        )
    path = write(table, tmp_path / "t" / "part-0.parquet")
    with pytest.raises(InputError, match=rf"{path}: column '{column}' holds 1 score.*row\(s\) 2;"):
        read(tmp_path / "t")
