"""Each task's metrics (scikit-learn, scipy, seqeval) and its trivial baseline, on small
hand-checked predictions."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from services.trainer.training.evaluation import (
    IGNORED,
    MultiLabelMetrics,
    RegressionMetrics,
    TokenClassificationMetrics,
    baseline_metrics,
    eval_metrics,
    metrics_for,
)
from services.trainer.training.stages import align_tags
from shared.tasks import TASK_METRICS, TASKS


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_multi_label_thresholds_sigmoids_at_one_half() -> None:
    # 3 labels, 2 rows: truth {0,1} and {}; predicted {0} (label 1 at 0.4) and {2}.
    truth = np.array([[1, 1, 0], [0, 0, 0]], dtype=float)
    logits = np.array([[_logit(0.9), _logit(0.4), _logit(0.1)], [-3.0, -3.0, _logit(0.6)]])
    values = MultiLabelMetrics()(EvalPrediction(predictions=logits, label_ids=truth))
    # micro: tp 1, fp 1, fn 1 -> precision 1/2, recall 1/2, F1 1/2.
    assert values["precision_micro"] == pytest.approx(0.5)
    assert values["recall_micro"] == pytest.approx(0.5)
    assert values["f1_micro"] == pytest.approx(0.5)
    # per label F1: 1, 0, 0 (zero division counts 0).
    assert values["f1_macro"] == pytest.approx(1 / 3)
    assert values["subset_accuracy"] == values["accuracy"] == 0.0


def test_regression_errors_and_correlations() -> None:
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([[1.5], [2.0], [2.5], [5.0]])
    values = RegressionMetrics()(EvalPrediction(predictions=predicted, label_ids=truth))
    assert values["mse"] == pytest.approx((0.25 + 0 + 0.25 + 1) / 4)
    assert values["mae"] == pytest.approx((0.5 + 0 + 0.5 + 1) / 4)
    assert values["spearman"] == pytest.approx(1.0)
    assert 0.9 < values["pearson"] < 1.0


def test_a_constant_prediction_correlates_zero_not_nan() -> None:
    truth = np.array([1.0, 2.0, 3.0])
    values = RegressionMetrics()(EvalPrediction(predictions=np.full((3, 1), 2.0), label_ids=truth))
    assert values["pearson"] == 0.0 and values["spearman"] == 0.0


def test_token_classification_scores_entities_strictly_and_words_apart() -> None:
    names = ["B-LOC", "B-PER", "I-PER", "O"]
    b_per, i_per, b_loc, o = 1, 2, 0, 3
    # One row: "Ada Lovelace visited Paris" + one ignored sub-token and padding.
    labels = np.array([[IGNORED, b_per, i_per, IGNORED, o, b_loc, IGNORED]])
    # Predicted: the person right (its ignored sub-token says anything), Paris missed.
    predicted = np.array([[o, b_per, i_per, b_loc, o, o, b_per]])
    values = TokenClassificationMetrics(names)(
        EvalPrediction(predictions=predicted, label_ids=labels)
    )
    assert values["precision"] == pytest.approx(1.0)
    assert values["recall"] == pytest.approx(0.5)
    assert values["f1"] == pytest.approx(2 / 3)
    assert values["accuracy"] == pytest.approx(3 / 4)


def test_an_inside_tag_without_its_beginning_is_no_entity_in_strict_iob2() -> None:
    names = ["B-PER", "I-PER", "O"]
    values = TokenClassificationMetrics(names).score([["B-PER", "I-PER"]], [["O", "I-PER"]])
    assert values["f1"] == 0.0 and values["accuracy"] == 0.5


def test_the_first_sub_token_of_a_word_carries_its_tag() -> None:
    # [CLS] w0 w0 w1 [SEP] [PAD]
    assert align_tags([None, 0, 0, 1, None, None], [5, 7]) == [
        IGNORED,
        5,
        IGNORED,
        7,
        IGNORED,
        IGNORED,
    ]


def test_baselines_are_the_trivial_predictors_with_the_tasks_keys() -> None:
    single = baseline_metrics("single_label_classification", [0, 1, 1], [1, 0, 1, 1], ["a", "b"])
    assert single["eval_accuracy"] == pytest.approx(0.75)
    assert "eval_loss" not in single
    multi = baseline_metrics(
        "multi_label_classification",
        [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [1.0, 0.0]],
        ["x", "y"],
    )
    assert multi["eval_subset_accuracy"] == multi["eval_accuracy"] == pytest.approx(0.5)
    assert multi["eval_f1_micro"] == 0.0
    regression = baseline_metrics("regression", [1.0, 3.0], [0.0, 4.0], [])
    assert regression == {"eval_mse": pytest.approx(4.0), "eval_mae": pytest.approx(2.0)}
    tokens = baseline_metrics(
        "token_classification", [[2, 0]], [[0, 1, 2], [2]], ["B-PER", "I-PER", "O"]
    )
    assert tokens["eval_f1"] == 0.0 and tokens["eval_accuracy"] == pytest.approx(0.5)
    assert baseline_metrics("regression", [1.0], [], []) == {}


@pytest.mark.parametrize("task", TASKS)
def test_every_task_reports_exactly_its_documented_keys(task: str) -> None:
    names = ["B-X", "I-X", "O"]
    computed = metrics_for(task, names)  # type: ignore[arg-type]
    if task == "regression":
        prediction = EvalPrediction(
            predictions=np.array([[0.1], [0.9]]), label_ids=np.array([0.0, 1.0])
        )
    elif task == "multi_label_classification":
        prediction = EvalPrediction(
            predictions=np.array([[2.0, -2.0, 0.0], [-1.0, 1.0, 0.0]]),
            label_ids=np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
        )
    elif task == "token_classification":
        prediction = EvalPrediction(
            predictions=np.array([[0, 1, 2]]), label_ids=np.array([[0, 1, IGNORED]])
        )
    else:
        prediction = EvalPrediction(predictions=np.eye(3)[[0, 1]], label_ids=np.array([0, 2]))
    raw = {f"eval_{k}": v for k, v in computed(prediction).items()} | {"eval_loss": 0.5}
    assert set(eval_metrics(raw, task)) == set(TASK_METRICS[task])  # type: ignore[index]
    assert list(eval_metrics(raw, task)) == [
        name
        for name in TASK_METRICS[task]
        if name in raw  # type: ignore[index]
    ]


@pytest.mark.parametrize("task", [t for t in TASKS if t != "single_label_classification"])
def test_only_single_label_keeps_a_confusion_matrix(task: str) -> None:
    """What the run's commit and MLflow's ``confusion_matrix/`` artifacts read: nothing for
    the other tasks (a matrix of label sets, numbers or tags means nothing)."""
    assert metrics_for(task, ["B-X", "I-X", "O"]).confusion_matrix is None  # type: ignore[arg-type]
