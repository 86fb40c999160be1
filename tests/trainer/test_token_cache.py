"""The tokenized-dataset cache: identical to a fresh tokenization, shared across runs, and
invalidated whenever the data, the tokenizer or the length changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.training import stages
from services.trainer.training.data import prepare_data
from services.trainer.training.token_cache import CACHE_DIR, TokenCache, cache_key
from shared.types import BertFineTuneConfig
from tests.tiny import build_tiny_bert, build_tiny_roberta, sentiment_rows, write_csv


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("token-cache-models")
    return {"bert": build_tiny_bert(root / "bert"), "roberta": build_tiny_roberta(root / "rob")}


def _prepared(tmp_path: Path, rows: int = 40, seed: int = 0):  # noqa: ANN202
    train = write_csv(tmp_path / f"train-{rows}-{seed}.csv", sentiment_rows(rows, seed=seed))
    valid = write_csv(tmp_path / f"valid-{rows}-{seed}.csv", sentiment_rows(12, seed=seed + 1))
    config = BertFineTuneConfig(
        train_file=str(train),
        validation_file=str(valid),
    )
    return prepare_data(config, LocalPathRoots.of([tmp_path]))


def _columns(dataset) -> dict:  # noqa: ANN001
    return {name: list(dataset[name]) for name in dataset.column_names}


def test_a_cached_tokenization_is_identical_to_a_fresh_one(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    data = _prepared(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(models["bert"])
    fresh = stages.tokenize(data, tokenizer, 32)
    cache = TokenCache(tmp_path / "runs")
    first = stages.tokenize(data, tokenizer, 32, cache=cache)  # a miss: tokenizes and saves
    second = stages.tokenize(data, tokenizer, 32, cache=cache)  # a hit: read from disk
    key = cache_key(data.fingerprint, tokenizer, 32)
    assert sorted(p.name for p in (tmp_path / "runs" / CACHE_DIR / key).iterdir()) == [
        "eval",
        "train",
    ]
    for split in (0, 1):
        assert _columns(first[split]) == _columns(fresh[split])
        assert _columns(second[split]) == _columns(fresh[split])
    assert second[0].cache_files, "a hit is memory-mapped from the cache, not tokenized again"


def test_any_change_of_data_tokenizer_or_length_gives_another_entry(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    data = _prepared(tmp_path)
    other_data = _prepared(tmp_path, rows=41)
    bert = AutoTokenizer.from_pretrained(models["bert"])
    roberta = AutoTokenizer.from_pretrained(models["roberta"])
    keys = {
        cache_key(data.fingerprint, bert, 32),
        cache_key(other_data.fingerprint, bert, 32),
        cache_key(data.fingerprint, roberta, 32),
        cache_key(data.fingerprint, bert, 64),
    }
    assert len(keys) == 4
    # The same tokenizer loaded again (another trial, another worker) shares the entry.
    assert cache_key(data.fingerprint, AutoTokenizer.from_pretrained(models["bert"]), 32) in keys
    # A tokenizer whose vocabulary changed under the same folder name does not.
    changed = AutoTokenizer.from_pretrained(models["bert"])
    changed.add_tokens(["brandnewword"])
    assert cache_key(data.fingerprint, changed, 32) not in keys
    # And what each entry holds follows its key: a shorter length truncates.
    cache = TokenCache(tmp_path / "runs")
    long_rows = stages.tokenize(data, bert, 64, cache=cache)[0]
    short_rows = stages.tokenize(data, bert, 4, cache=cache)[0]
    assert max(len(ids) for ids in short_rows["input_ids"]) == 4
    assert max(len(ids) for ids in long_rows["input_ids"]) > 4


def test_a_damaged_entry_is_tokenized_again_and_old_entries_are_pruned(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models["bert"])
    cache = TokenCache(tmp_path / "runs", max_entries=2)
    data = _prepared(tmp_path)
    fresh = _columns(stages.tokenize(data, tokenizer, 32)[0])
    stages.tokenize(data, tokenizer, 32, cache=cache)
    entry = tmp_path / "runs" / CACHE_DIR / cache_key(data.fingerprint, tokenizer, 32)
    for arrow in (entry / "train").glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    assert _columns(stages.tokenize(data, tokenizer, 32, cache=cache)[0]) == fresh
    for seed in (1, 2, 3):
        stages.tokenize(_prepared(tmp_path, seed=seed), tokenizer, 32, cache=cache)
    kept = [p for p in (tmp_path / "runs" / CACHE_DIR).iterdir() if not p.name.startswith(".")]
    assert len(kept) == 2
