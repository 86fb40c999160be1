"""data.py for every task on small real files: the rows each task trains on, and a clear
``DatasetError`` naming the row and field for each malformed case (never the file's text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.training.data import prepare_data
from shared.types import BertFineTuneConfig
from tests.conftest import TEST_LOCAL_PATH_ROOTS
from tests.tiny import write_csv

ROOTS = LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
SECRET = "SECRET-do-not-echo"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def _prepare(train: Path, validation: Path | None = None, **fields: object):
    return prepare_data(
        BertFineTuneConfig(
            train_file=str(train),
            validation_file=str(validation) if validation else None,
            **fields,
        ),
        ROOTS,
    )


def _dataset_error(train: Path, validation: Path | None = None, **fields: object) -> str:
    with pytest.raises(ApplicationError) as raised:
        _prepare(train, validation, **fields)
    assert raised.value.type == "DatasetError" and raised.value.non_retryable
    assert SECRET not in raised.value.message, "file contents leaked into the message"
    return raised.value.message


NER = {"task": "token_classification", "text_column": "tokens", "label_column": "tags"}


def test_token_classification_rows_hold_words_and_tag_ids(tmp_path: Path) -> None:
    train = _jsonl(
        tmp_path / "t.jsonl",
        [
            {"tokens": ["Ada", "met", "Bob"], "tags": ["B-PER", "O", "B-PER"]},
            {"tokens": "in Paris", "tags": "O B-LOC"},  # strings split on whitespace
        ],
    )
    data = _prepare(train, train, **NER)
    assert data.label_names == ["B-LOC", "B-PER", "O"]
    assert data.train["words"] == [["Ada", "met", "Bob"], ["in", "Paris"]]
    assert data.train["text"] == ["Ada met Bob", "in Paris"]
    assert data.train["labels"] == [[1, 2, 1], [2, 0]]
    assert data.baseline_metrics["eval_f1"] == 0.0  # all O finds no entity
    assert data.majority_baseline == pytest.approx(2 / 5)


def test_words_and_tags_of_different_lengths_name_the_row(tmp_path: Path) -> None:
    train = _jsonl(
        tmp_path / "t.jsonl",
        [
            {"tokens": ["a", "b"], "tags": ["O", "O"]},
            {"tokens": [SECRET, "b", "c"], "tags": ["O", "B-PER"]},
        ],
    )
    message = _dataset_error(train, **NER)
    assert "train row 1: text_column 'tokens' has 3 words but label_column 'tags' has 2" in message


def test_a_tag_that_is_not_iob2_names_the_row_and_position(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "tags": ["O", SECRET]}])
    message = _dataset_error(train, **NER)
    assert "train row 0: tag 1 of label_column 'tags' is not an IOB2 tag" in message


def test_a_validation_tag_the_train_split_lacks_is_refused(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "B-PER"]}])
    validation = _jsonl(
        tmp_path / "v.jsonl",
        [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["b"], "tags": ["B-ORG"]}],
    )
    message = _dataset_error(train, validation, **NER)
    assert "validation split has 1 rows with a tag that never occurs" in message
    assert "validation row 1" in message


MULTI = {
    "task": "multi_label_classification",
    "text_column": "text",
    "label_column": "topics",
    "label_separator": "|",
}


def test_multi_label_cells_split_on_the_separator_into_multi_hot_rows(tmp_path: Path) -> None:
    train = write_csv(
        tmp_path / "t.csv",
        [("a", "sports|politics"), ("b", ""), ("c", "politics"), ("d", "")],
        header=("text", "topics"),
    )
    data = _prepare(train, train, **MULTI)
    assert data.label_names == ["politics", "sports"]
    assert data.train["labels"] == [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    # The most frequent label set (none) is right for half the rows.
    assert data.baseline_metrics["eval_subset_accuracy"] == pytest.approx(0.5)
    assert data.majority_baseline == pytest.approx(0.5)


def test_multi_label_lists_in_json_lines(tmp_path: Path) -> None:
    train = _jsonl(
        tmp_path / "t.jsonl",
        [{"text": "a", "topics": ["x", "y"]}, {"text": "b", "topics": []}],
    )
    data = _prepare(train, **{**MULTI, "label_separator": None})
    assert data.label_names == ["x", "y"] and data.train["labels"][1] == [0.0, 0.0]


def test_an_unknown_label_in_validation_data_names_the_row(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", [("a", "x"), ("b", "y")], header=("text", "topics"))
    validation = write_csv(
        tmp_path / "v.csv", [("a", "x"), ("b", f"y|{SECRET}")], header=("text", "topics")
    )
    message = _dataset_error(train, validation, **MULTI)
    assert "validation split has 1 rows with a label that never occurs" in message
    assert "validation row 1" in message


def test_multi_label_data_without_any_label_is_refused(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", [("a", ""), ("b", "")], header=("text", "topics"))
    assert "no labels at all" in _dataset_error(train, **MULTI)


REGRESSION = {"task": "regression", "text_column": "text", "label_column": "score"}


def test_regression_rows_hold_numbers_and_the_baseline_is_the_training_mean(
    tmp_path: Path,
) -> None:
    train = write_csv(tmp_path / "t.csv", [("a", 1.0), ("b", 3.0)], header=("text", "score"))
    validation = write_csv(tmp_path / "v.csv", [("c", 0.0), ("d", 4)], header=("text", "score"))
    data = _prepare(train, validation, **REGRESSION)
    assert data.label_names == [] and data.train["labels"] == [1.0, 3.0]
    assert data.baseline_metrics == {"eval_mse": 4.0, "eval_mae": 2.0}
    assert data.majority_baseline is None


def test_a_non_numeric_regression_label_names_the_row(tmp_path: Path) -> None:
    train = write_csv(
        tmp_path / "t.csv", [("a", "1.5"), ("b", SECRET), ("c", "2")], header=("text", "score")
    )
    message = _dataset_error(train, **REGRESSION)
    assert "train row 1: label_column 'score' is not a number" in message


def test_an_empty_regression_label_names_the_row(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", [("a", "1.5"), ("b", "")], header=("text", "score"))
    assert "train row 1: label_column 'score' is empty" in (_dataset_error(train, **REGRESSION))


PAIRS = {"text_column": "premise", "text_pair_column": "hypothesis", "label_column": "label"}


def test_pairs_keep_both_texts(tmp_path: Path) -> None:
    rows = [("a cat", "an animal", "entails"), ("a cat", "a dog", "contradicts")]
    train = write_csv(tmp_path / "t.csv", rows, header=("premise", "hypothesis", "label"))
    data = _prepare(train, **PAIRS)
    assert data.has_pairs and data.train["text_pair"] == ["an animal", "a dog"]
    assert data.train["labels"] == [1, 0]


def test_an_empty_second_text_names_the_row(tmp_path: Path) -> None:
    rows = [("a cat", "an animal", "x"), (SECRET, " ", "y")]
    train = write_csv(tmp_path / "t.csv", rows, header=("premise", "hypothesis", "label"))
    message = _dataset_error(train, **PAIRS)
    assert "train row 1: text_pair_column 'hypothesis' is empty" in message


def test_a_missing_pair_column_is_named(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", [("a", "x"), ("b", "y")])
    message = _dataset_error(train, text_pair_column="second")
    assert "text_pair_column 'second' is not a column of the train split" in message


def test_the_fingerprint_tells_tasks_apart_and_keeps_single_label_as_it_was(
    tmp_path: Path,
) -> None:
    rows = [("a", "x"), ("b", "y"), ("c", "x")]
    train = write_csv(tmp_path / "t.csv", rows, header=("text", "topics"))
    single = _prepare(train, text_column="text", label_column="topics").fingerprint
    multi = _prepare(train, **{**MULTI, "label_separator": None}).fingerprint
    assert single != multi
    # The first round's fingerprint of this file (a single-label run keeps its identity).
    import hashlib

    from shared.runs import file_sha256

    expected = hashlib.sha256(
        json.dumps(
            {
                "source": f"files:{file_sha256(train)}",
                "train_rows": 3,
                "eval_rows": 0,
                "labels": ["x", "y"],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    assert single == expected
