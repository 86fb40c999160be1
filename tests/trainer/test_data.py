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


def test_more_classes_than_the_cap_is_refused_naming_label_column_and_the_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = write_csv(tmp_path / "t.csv", [(f"text {i}", f"class-{i}") for i in range(12)])
    with pytest.raises(ApplicationError) as raised:
        prepare_data(_config(train), ROOTS, max_classes=10)
    assert raised.value.type == "InvalidConfig" and raised.value.non_retryable
    assert "label_column 'label' has 12 classes, more than the 10" in raised.value.message
    assert "class-" not in raised.value.message, "a label value leaked into the message"
    monkeypatch.setenv("BERT_MAX_CLASSES", "11")
    with pytest.raises(ApplicationError, match="more than the 11"):
        prepare_data(_config(train), ROOTS)
    monkeypatch.setenv("BERT_MAX_CLASSES", "12")
    assert len(prepare_data(_config(train), ROOTS).label_names) == 12


@pytest.mark.parametrize("name", ["csv", "json", "parquet", "text", "CSV", "imagefolder", "sql"])
def test_a_builtin_loader_as_dataset_name_is_refused_before_reading_anything(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_dataset("csv")`` would read every csv under the working directory."""
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "secret.csv", [("SECRET", "x"), ("other", "y")])
    config = BertFineTuneConfig(dataset_name=name, dataset_config_name=None)
    with pytest.raises(ApplicationError) as raised:
        prepare_data(config, LocalPathRoots.of([tmp_path]))
    assert raised.value.type == "InvalidConfig"
    assert f"dataset_name {name!r}" in raised.value.message
    assert "train_file and validation_file" in raised.value.message


@pytest.mark.parametrize(
    "data_files",
    ["/etc/hostname", "../outside.csv", "data/../../outside.csv", "~/x.csv", "https://x/y.csv"],
)
def test_a_dataset_folder_whose_card_names_files_outside_it_is_refused(
    data_files: str, tmp_path: Path
) -> None:
    folder = tmp_path / "dataset"
    write_csv(folder / "train.csv", sentiment_rows(20, string_labels=True))
    write_csv(tmp_path / "outside.csv", [("SECRET", "x"), ("other", "y")])
    (folder / "README.md").write_text(
        f'---\nconfigs:\n- config_name: default\n  data_files: "{data_files}"\n---\n',
        encoding="utf-8",
    )
    config = BertFineTuneConfig(dataset_name=str(folder), dataset_config_name=None)
    with pytest.raises(ApplicationError) as raised:
        prepare_data(config, LocalPathRoots.of([tmp_path]))
    assert raised.value.type == "InvalidConfig"
    assert "README.md has configs[0].data_files" in raised.value.message
    assert data_files not in raised.value.message, "the card's content is never quoted"


def test_a_dataset_folder_whose_card_names_its_own_files_loads(tmp_path: Path) -> None:
    folder = tmp_path / "dataset"
    write_csv(folder / "data" / "train.csv", sentiment_rows(20, string_labels=True))
    (folder / ".huggingface.yaml").write_text(
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.csv\n",
        encoding="utf-8",
    )
    config = BertFineTuneConfig(dataset_name=str(folder), dataset_config_name=None)
    assert len(prepare_data(config, LocalPathRoots.of([tmp_path])).train) == 20


def test_messages_give_counts_and_rows_never_label_values(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", [("a", "SECRET-1"), ("b", "SECRET-1")])
    with pytest.raises(ApplicationError) as single:
        prepare_data(_config(train), ROOTS)
    assert "(2 rows, one label)" in single.value.message
    assert "SECRET" not in single.value.message
    train = write_csv(tmp_path / "u.csv", [("a", "x"), ("b", "y")])
    validation = write_csv(tmp_path / "v.csv", [("a", "x"), ("b", "SECRET-2"), ("c", "SECRET-3")])
    with pytest.raises(ApplicationError) as unseen:
        prepare_data(_config(train, validation_file=str(validation)), ROOTS)
    assert "validation split has 2 rows whose label never occurs" in unseen.value.message
    assert "validation row 1" in unseen.value.message
    assert "SECRET" not in unseen.value.message
