"""data.py on real small files: label encoding, subsampling, fingerprints, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.training.data import prepare_data
from shared.types import BertFineTuneConfig
from tests.conftest import TEST_LOCAL_PATH_ROOTS
from tests.tiny import sentiment_rows, write_csv

ROOTS = LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)


def _config(train: Path, **fields: object) -> BertFineTuneConfig:
    return BertFineTuneConfig(train_file=str(train), **fields)


def test_string_labels_map_to_ids_in_sorted_order(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", [("a b", "zebra"), ("c d", "ant"), ("e f", "moth")])
    data = prepare_data(_config(train), ROOTS)
    assert data.label_names == ["ant", "moth", "zebra"]
    assert data.train["labels"] == [2, 0, 1]
    assert data.eval is None and data.majority_baseline is None


def test_subsampling_is_seeded_and_notes_a_limit_above_the_rows(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", sentiment_rows(40, string_labels=True))
    first = prepare_data(_config(train, max_train_samples=10, seed=3), ROOTS)
    again = prepare_data(_config(train, max_train_samples=10, seed=3), ROOTS)
    assert first.train["text"] == again.train["text"] and len(first.train) == 10
    everything = prepare_data(_config(train, max_train_samples=100), ROOTS)
    assert len(everything.train) == 40
    assert any("max_train_samples=100" in note for note in everything.notes)


def test_the_fingerprint_follows_the_file_contents_not_their_path(tmp_path: Path) -> None:
    rows = sentiment_rows(20, string_labels=True)
    one = prepare_data(_config(write_csv(tmp_path / "a.csv", rows)), ROOTS).fingerprint
    two = prepare_data(_config(write_csv(tmp_path / "b.csv", rows)), ROOTS).fingerprint
    other = prepare_data(_config(write_csv(tmp_path / "c.csv", rows[:-1])), ROOTS).fingerprint
    assert one == two != other


def test_a_single_class_is_a_dataset_error_naming_the_fix(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", [("a", "x"), ("b", "x")])
    with pytest.raises(ApplicationError) as raised:
        prepare_data(_config(train), ROOTS)
    assert raised.value.type == "DatasetError" and "at least two" in raised.value.message
