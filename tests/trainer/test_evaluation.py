"""Evaluation metrics (scikit-learn), evaluation history and the stop epoch of a request."""

from __future__ import annotations

import math

import numpy as np
import pytest
from temporalio.exceptions import ApplicationError
from transformers import EvalPrediction

from services.trainer.training.evaluation import (
    ClassificationMetrics,
    eval_metrics,
    refuse_non_finite,
)
from services.trainer.training.stages import evaluation_history, mean_logged_loss, stop_epoch
from shared.types import BertFineTuneConfig, BertFineTuneRequest


def test_classification_metrics_macro_average_and_confusion_matrix() -> None:
    # 3 classes; truth 0,0,0,1,2 and predictions 0,0,1,1,1.
    truth = np.array([0, 0, 0, 1, 2])
    logits = np.eye(3)[[0, 0, 1, 1, 1]]
    computed = ClassificationMetrics(num_labels=3)
    values = computed(EvalPrediction(predictions=logits, label_ids=truth))
    assert values["accuracy"] == pytest.approx(3 / 5)
    # per class precision 1, 1/3, 0; recall 2/3, 1, 0; F1 0.8, 0.5, 0.
    assert values["precision_macro"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert values["recall_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert values["f1_macro"] == pytest.approx((0.8 + 0.5 + 0) / 3)
    assert computed.confusion_matrix == [[2, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_eval_metrics_keeps_the_documented_names_only() -> None:
    raw = {"eval_accuracy": 1, "eval_loss": 0.1, "eval_runtime": 3.0, "epoch": 2.0}
    assert eval_metrics(raw) == {"eval_accuracy": 1.0, "eval_loss": 0.1}


def test_evaluation_history_takes_one_entry_per_step_in_order() -> None:
    log_history = [
        {"loss": 0.7, "step": 5, "epoch": 0.5},
        {"eval_loss": 0.6, "eval_accuracy": 0.6, "step": 10, "epoch": 1.0},
        {"loss": 0.5, "step": 15, "epoch": 1.5},
        {"eval_loss": 0.4, "eval_accuracy": 0.8, "step": 20, "epoch": 2.0},
    ]
    history = evaluation_history(log_history)
    assert [(e.epoch, e.global_step) for e in history] == [(1, 10), (2, 20)]
    assert history[-1].metrics == {"eval_accuracy": 0.8, "eval_loss": 0.4}
    assert mean_logged_loss(log_history) == pytest.approx(0.6)
    assert math.isnan(mean_logged_loss([]))


def _request(**fields: object) -> BertFineTuneRequest:
    config = BertFineTuneConfig(train_file="t.csv", num_epochs=4)
    return BertFineTuneRequest(run_id="r", config=config, **fields)


def test_stop_epoch_is_the_earlier_of_pause_and_finish_and_never_the_last() -> None:
    assert stop_epoch(_request()) is None
    assert stop_epoch(_request(pause_at_epoch=1)) == 1
    assert stop_epoch(_request(finish_at_epoch=2, pause_at_epoch=3)) == 2
    assert stop_epoch(_request(pause_at_epoch=4)) is None  # the last epoch never pauses
    assert stop_epoch(_request(finish_at_epoch=9)) is None


@pytest.mark.parametrize(
    ("train_loss", "final", "history", "named"),
    [
        (math.nan, {"eval_loss": 0.5}, [], "train_loss is nan"),
        (0.4, {"eval_loss": math.inf, "eval_accuracy": 0.5}, [], "eval_loss is inf"),
        (0.4, {"eval_loss": 0.3}, [(1, {"eval_loss": -math.inf})], "eval_loss at epoch 1"),
    ],
)
def test_a_non_finite_loss_or_metric_is_training_diverged(
    train_loss: float,
    final: dict[str, float],
    history: list[tuple[int, dict[str, float]]],
    named: str,
) -> None:
    with pytest.raises(ApplicationError) as raised:
        refuse_non_finite(train_loss, final, history, learning_rate=0.05)
    assert raised.value.type == "TrainingDiverged" and raised.value.non_retryable
    assert named in raised.value.message and "learning_rate (now 0.05)" in raised.value.message


def test_finite_numbers_pass_and_a_final_nan_is_named_once() -> None:
    refuse_non_finite(0.3, {"eval_loss": 0.2}, [(1, {"eval_loss": 0.25})], learning_rate=1e-5)
    with pytest.raises(ApplicationError) as raised:
        refuse_non_finite(0.3, {"eval_loss": math.nan}, [(1, {"eval_loss": math.nan})], 1e-5)
    assert raised.value.message.count("eval_loss") == 1
