"""``overwrite: true`` stages the new run and swaps it in: until then the old run is complete
and served, and a failed overwrite leaves it (and its alias) exactly as it was.

The training activity on real files with the tiny BERT (``ActivityEnvironment``); the same
through a real Temporal stack, cancel included, is in ``tests/durability/test_overwrite.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from services.inferencer.model_cache import load_model
from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.run_folder.run_directory import REPLACED_DIR, TRAINING_FILES
from shared import aliases
from shared.errors import INVALID_CONFIG, RESOURCE_EXHAUSTED
from shared.runs import RUN_MANIFEST, read_record, resolve_served_run
from shared.types import BertFineTuneConfig, BertFineTuneRequest, BertFineTuneResult
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway
from tests.tiny import sentiment_rows, write_csv

RUN_ID = "overwritten-run-0-tiny"
TEXTS = ["the movie was great fun", "awful"]


def _train(runs_root: Path, config: dict, **request: object) -> BertFineTuneResult:
    return ActivityEnvironment().run(
        TrainingActivities(
            runs_root, OfflineGateway(), local_path_roots=LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
        ).fine_tune_bert,
        BertFineTuneRequest(
            run_id=RUN_ID, config=BertFineTuneConfig.model_validate(config), **request
        ),
    )


def tree(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of the run with its size and modification time."""
    return {
        str(path.relative_to(run_dir)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def served_labels(runs_root: Path) -> list[str]:
    served = resolve_served_run(runs_root, aliases.resolve_alias(runs_root, "prod"))
    return load_model(served.model_dir, "cpu").label_names


@pytest.fixture
def upper_case_data(tmp_path: Path) -> SentimentData:
    """The same task with other label names: which model answers shows in its labels."""

    def upper(rows: list[tuple[str, object]]) -> list[tuple[str, object]]:
        return [(text, str(label).upper()) for text, label in rows]

    return SentimentData(
        train=write_csv(tmp_path / "upper" / "train.csv", upper(sentiment_rows(160, 1, True))),
        validation=write_csv(
            tmp_path / "upper" / "validation.csv", upper(sentiment_rows(40, 2, True))
        ),
    )


@pytest.fixture
def finished(tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path) -> Path:
    """A finished run, promoted to ``prod``."""
    _train(runs_root, tiny_config(tiny_model, sentiment_csv, num_epochs=2))
    aliases.promote(runs_root, RUN_ID, "prod")
    assert served_labels(runs_root) == ["negative", "positive"]
    return runs_root / RUN_ID


def test_a_failed_overwrite_keeps_the_old_run_served_and_a_retry_swaps_it(
    finished: Path,
    runs_root: Path,
    tiny_model: Path,
    upper_case_data: SentimentData,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before, pointer = tree(finished), aliases.read_pointer(runs_root, "prod")
    new_config = tiny_config(tiny_model, upper_case_data, num_epochs=2)

    # Out of memory even one row at a time: the overwrite fails for good.
    def no_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(transformers.Trainer, "train", no_memory)
        with pytest.raises(ApplicationError) as exhausted:
            _train(runs_root, new_config, overwrite=True)
    assert exhausted.value.type == RESOURCE_EXHAUSTED
    assert tree(finished) == before, "the failed overwrite changed the old run"
    assert aliases.read_pointer(runs_root, "prod") == pointer
    assert served_labels(runs_root) == ["negative", "positive"]

    # A crash while training (retried by Temporal): meanwhile the old run is still served.
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the trainer died")

    with monkeypatch.context() as patch:
        patch.setattr(transformers.Trainer, "train", crash)
        with pytest.raises(RuntimeError, match="died"):
            _train(runs_root, new_config, overwrite=True)
    # Only the overwrite's own training files (its claim, checkpoints) sit beside the run.
    committed = {n: s for n, s in tree(finished).items() if n.split("/")[0] not in TRAINING_FILES}
    assert committed == before, "the old run's files changed before the overwrite committed"
    assert served_labels(runs_root) == ["negative", "positive"]

    # The retry of the same overwrite trains and swaps the new run in, in one step.
    result = _train(runs_root, new_config, overwrite=True)
    assert not result.reused and result.label_names == ["NEGATIVE", "POSITIVE"]
    assert served_labels(runs_root) == ["NEGATIVE", "POSITIVE"]
    assert read_record(finished).config.train_file == str(upper_case_data.train)
    names = {path.name for path in finished.iterdir()}
    assert not names & {"checkpoints", ".owner.json", REPLACED_DIR, ".swap.json"}
    staging = runs_root / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), "staged files were left"


def test_an_unreadable_run_json_is_replaced_only_with_overwrite(
    finished: Path, runs_root: Path, tiny_model: Path, sentiment_csv: SentimentData
) -> None:
    (finished / RUN_MANIFEST).write_text('{"schema_version": 99}', encoding="utf-8")
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=2)

    with pytest.raises(ApplicationError) as refused:
        _train(runs_root, config)
    assert refused.value.type == INVALID_CONFIG and refused.value.non_retryable
    message = refused.value.message
    assert f"run {RUN_ID!r} is finished but its run.json cannot be read" in message
    assert "set overwrite: true to replace it" in message and "train it again" not in message

    result = _train(runs_root, config, overwrite=True)
    assert not result.reused
    assert read_record(finished).run_id == RUN_ID
    assert served_labels(runs_root) == ["negative", "positive"]
