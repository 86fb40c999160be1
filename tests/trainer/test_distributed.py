"""One run over two processes (torchrun, DDP on gloo) trains like one process.

Real torchrun, real ranks, real Trainer on the tiny BERT; the activity context comes from
``ActivityEnvironment`` so heartbeats run as in a worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from services.trainer.launcher import DistributedTraining, ranks_for, resolve_processes
from services.trainer.progress import ProgressReporter
from services.trainer.stages import Attempt
from services.trainer.stopping import StopControl
from services.trainer.training import fine_tune
from shared.runs import is_complete
from shared.settings import Settings, SettingsError
from shared.types import BertFineTuneRequest, BertFineTuneResult, TrainingProgress
from tests.durability.harness import predicts_sentiment
from tests.tiny import sentiment_rows, write_csv


class LossCurve(ProgressReporter):
    """The activity's reporter, also keeping every logged loss by step."""

    def __init__(self, run_id: str) -> None:
        super().__init__(TrainingProgress(run_id=run_id))
        self.losses: dict[int, float] = {}

    def update(self, **fields: Any) -> None:
        super().update(**fields)
        if fields.get("loss") is not None:
            self.losses[self.progress.global_step] = float(fields["loss"])


def _train(
    train: Any, model: Path, data: tuple[Path, Path], runs_root: Path
) -> tuple[BertFineTuneResult, dict[int, float]]:
    request = BertFineTuneRequest.model_validate(
        {
            "run_id": "ddp-run-0-tiny",
            "config": {
                "model_name": str(model),
                "train_file": str(data[0]),
                "validation_file": str(data[1]),
                "num_epochs": 2,
                "batch_size": 8,
                "learning_rate": 0.005,
                "max_seq_length": 16,
                "use_gpu": False,
                "checkpoint_steps": 5,
            },
        }
    )
    reporter = LossCurve(request.run_id)
    stop = StopControl(lambda: False, lambda: False)

    def attempt() -> BertFineTuneResult:
        with reporter:
            return train(request, runs_root, reporter, stop, Attempt())

    return ActivityEnvironment().run(attempt), reporter.losses


def test_two_processes_train_the_same_loss_curve_as_one(tiny_model: Path, tmp_path: Path) -> None:
    data = (
        write_csv(tmp_path / "train.csv", sentiment_rows(96, seed=3, string_labels=True)),
        write_csv(tmp_path / "validation.csv", sentiment_rows(24, seed=4, string_labels=True)),
    )
    one, one_curve = _train(fine_tune, tiny_model, data, tmp_path / "one")
    two, two_curve = _train(DistributedTraining(2), tiny_model, data, tmp_path / "two")

    # Same optimizer steps over the same batches (each rank takes half of every batch)...
    assert sorted(two_curve) == sorted(one_curve) == list(range(1, 25))
    # ...so the same losses, up to dropout, whose masks differ between the layouts.
    for step, loss in one_curve.items():
        assert two_curve[step] == pytest.approx(loss, abs=0.03), f"step {step}"
    assert two.train_loss == pytest.approx(one.train_loss, abs=0.01)
    assert two.eval_metrics["eval_loss"] == pytest.approx(one.eval_metrics["eval_loss"], abs=0.02)
    assert two.num_train_samples == one.num_train_samples == 96
    # The leader committed a complete run a user can load.
    assert is_complete(Path(two.model_dir))
    assert not (Path(two.model_dir) / "checkpoints").exists()
    assert predicts_sentiment(two.model_dir) == predicts_sentiment(one.model_dir)


@pytest.mark.parametrize(
    ("batch_size", "processes", "ranks"), [(16, 4, 4), (16, 3, 2), (5, 2, 1), (6, 8, 6), (1, 2, 1)]
)
def test_ranks_split_the_batch_evenly(batch_size: int, processes: int, ranks: int) -> None:
    assert ranks_for(batch_size, processes) == ranks


def test_processes_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env({}).trainer_processes == 1
    assert Settings.from_env({"BERT_TRAINER_PROCESSES": "4"}).trainer_processes == 4
    assert Settings.from_env({"BERT_TRAINER_PROCESSES": "Auto"}).trainer_processes == "auto"
    # No GPU here: "auto" means one process, today's path.
    assert resolve_processes("auto") == 1
    for bad in ("0", "two"):
        with pytest.raises(SettingsError, match="BERT_TRAINER_PROCESSES"):
            Settings.from_env({"BERT_TRAINER_PROCESSES": bad})
