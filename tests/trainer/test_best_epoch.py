"""Early stopping and the best epoch (``BestEpochCallback``), on the Trainer's own state and
control objects; the sweep metric per task; reuse of a run ended by its patience."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers import TrainerControl, TrainerState

from services.trainer.orchestration.sweep_rules import best_trial, is_better, keeps_training
from services.trainer.training.callbacks import (
    BEST_EPOCH_FILE,
    BEST_WEIGHTS_FILE,
    BestEpochCallback,
)
from shared.run_record import RunRecord
from shared.sweep_types import BertSweepInput
from shared.types import BertFineTuneConfig, BertFineTuneResult


def _state(evaluations: list[float], metric: str, steps_per_epoch: int = 10) -> TrainerState:
    state = TrainerState()
    state.max_steps = 100
    for epoch, value in enumerate(evaluations, start=1):
        step = epoch * steps_per_epoch
        state.log_history.append({"loss": 0.5, "step": step - 1})
        state.log_history.append({metric: value, "eval_loss": value, "step": step})
    state.global_step = len(evaluations) * steps_per_epoch
    return state


class _Model(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((2,), value))


def _callback(**fields: Any) -> BestEpochCallback:
    options: dict[str, Any] = {
        "metric": "eval_f1_macro",
        "patience": 2,
        "keep_best": True,
        "confusion_matrix": lambda: [[1, 0], [0, 1]],
        "write_checkpoints": True,
    }
    options.update(fields)
    callback = BestEpochCallback(**options)
    callback.on_train_begin(None, TrainerState(), TrainerControl())
    return callback


def _evaluate(callback: BestEpochCallback, values: list[float], model: Any = None) -> Any:
    control = TrainerControl()
    callback.on_evaluate(None, _state(values, callback.metric), control, model=model)
    return control


def test_training_stops_once_the_metric_has_not_improved_for_patience_evaluations() -> None:
    callback = _callback()
    assert not _evaluate(callback, [0.5]).should_training_stop
    assert not _evaluate(callback, [0.5, 0.7]).should_training_stop
    assert not _evaluate(callback, [0.5, 0.7, 0.7]).should_training_stop  # equal: no gain
    control = _evaluate(callback, [0.5, 0.7, 0.7, 0.6])
    assert control.should_training_stop and callback.patience_stopped


def test_a_minimised_metric_improves_downwards() -> None:
    callback = _callback(metric="eval_mse", patience=1)
    assert not _evaluate(callback, [0.9, 0.4]).should_training_stop
    assert _evaluate(callback, [0.9, 0.4, 0.5]).should_training_stop
    assert callback.best_of(_state([0.9, 0.4, 0.5], "eval_mse").log_history) == (20, 1)


def test_the_best_epochs_weights_are_kept_and_written_into_checkpoints(tmp_path: Path) -> None:
    callback = _callback(patience=None)
    _evaluate(callback, [0.5], model=_Model(1.0))
    _evaluate(callback, [0.5, 0.8], model=_Model(2.0))
    _evaluate(callback, [0.5, 0.8, 0.6], model=_Model(3.0))
    assert callback.best_step == 20
    assert callback.best_weights is not None
    assert callback.best_weights["weight"].tolist() == [2.0, 2.0]
    # A checkpoint saved at step 30 carries them, so a resumed attempt keeps them.
    state = _state([0.5, 0.8, 0.6], callback.metric)
    (tmp_path / "checkpoint-30").mkdir()
    args = type("Args", (), {"output_dir": str(tmp_path)})()
    callback.on_save(args, state, TrainerControl())
    assert (tmp_path / "checkpoint-30" / BEST_WEIGHTS_FILE).is_file()
    assert (tmp_path / "checkpoint-30" / BEST_EPOCH_FILE).is_file()
    resumed = _callback(patience=None)
    resumed.resume_from(tmp_path / "checkpoint-30")
    resumed.on_train_begin(args, state, TrainerControl())
    assert resumed.best_step == 20 and resumed.best_weights is not None
    assert resumed.best_weights["weight"].tolist() == [2.0, 2.0]
    assert resumed.best_confusion_matrix == [[1, 0], [0, 1]]


def test_the_final_evaluation_after_training_never_stops_anything() -> None:
    callback = _callback(patience=1)
    callback.on_train_end(None, TrainerState(), TrainerControl())
    assert not _evaluate(callback, [0.9, 0.4]).should_training_stop


# --- sweeps and reuse ---------------------------------------------------------------


def _sweep(**fields: Any) -> BertSweepInput:
    return BertSweepInput.model_validate(
        {"sweep_name": "s", "space": {"seed": {"values": [1, 2]}}, **fields}
    )


def test_the_sweep_metric_defaults_per_task_and_single_label_keeps_accuracy() -> None:
    assert _sweep(base={"train_file": "t.csv"}).metric == "eval_accuracy"
    assert _sweep(base={"train_file": "t.csv", "task": "regression"}).metric == "eval_mse"
    tagged = {"train_file": "t.jsonl", "task": "token_classification"}
    assert _sweep(base=tagged).metric == "eval_f1"
    multi = {"train_file": "t.csv", "task": "multi_label_classification"}
    assert _sweep(base=multi).metric == "eval_f1_micro"
    assert _sweep(base=multi, metric="eval_subset_accuracy").metric == "eval_subset_accuracy"


def test_a_metric_the_task_lacks_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValidationError, match="metric: 'eval_accuracy' is not a metric of task"):
        _sweep(base={"train_file": "t.csv", "task": "regression"}, metric="eval_accuracy")


def test_trials_that_stop_early_judge_epochs_by_the_sweeps_metric() -> None:
    base = {"train_file": "t.csv", "early_stopping_patience": 2}
    sweep = _sweep(base=base, metric="eval_loss")
    assert sweep.trial_config({"seed": 1}).metric_for_best_model == "eval_loss"
    own = _sweep(base={**base, "metric_for_best_model": "eval_accuracy"}, metric="eval_loss")
    assert own.trial_config({"seed": 1}).metric_for_best_model == "eval_accuracy"
    # Without early stopping or keep_best_epoch the trial config is the base's (its identity
    # as before).
    plain = _sweep(base={"train_file": "t.csv"}, metric="eval_loss")
    assert plain.trial_config({"seed": 1}).metric_for_best_model is None


def test_rung_decisions_and_the_best_trial_follow_the_metrics_direction() -> None:
    arrivals = [(0, 0.30), (1, 0.10), (2, 0.20), (3, 0.40)]
    assert keeps_training(arrivals, 1, "eval_mse", 2) and keeps_training(arrivals, 2, "eval_mse", 2)
    assert not keeps_training(arrivals, 3, "eval_mse", 2)
    assert keeps_training(arrivals, 3, "eval_pearson", 2)
    assert best_trial(arrivals, "eval_mae") == 1 and best_trial(arrivals, "eval_f1") == 3
    assert is_better("eval_mse", 0.1, 0.2) and is_better("eval_spearman", 0.3, 0.2)


def _record(epochs_completed: int, stopped_early: bool, patience: int | None) -> RunRecord:
    config = BertFineTuneConfig(train_file="t.csv", num_epochs=8, early_stopping_patience=patience)
    result = BertFineTuneResult(
        run_id="r",
        config=config,
        train_loss=0.1,
        eval_accuracy=None,
        training_time_seconds=1.0,
        num_parameters=1,
        model_dir="/r",
        num_train_samples=1,
        train_samples_per_second=1.0,
        label_names=[],
    )
    return RunRecord(
        run_id="r",
        config=config,
        data_fingerprint="d",
        label_names=[],
        result=result,
        epochs_completed=epochs_completed,
        stopped_early=stopped_early,
    )


def test_a_run_ended_by_its_patience_covers_its_config_a_pruned_one_does_not() -> None:
    assert _record(3, stopped_early=False, patience=2).trained_epochs() == 8
    assert _record(3, stopped_early=False, patience=2).patience_stopped()
    assert _record(3, stopped_early=True, patience=2).trained_epochs() == 3
    assert _record(3, stopped_early=True, patience=None).trained_epochs() == 3
    assert _record(8, stopped_early=False, patience=2).trained_epochs() == 8
