"""Evaluation metrics per task, computed by the ecosystem's libraries (never by hand):
scikit-learn for classes and label sets, scipy for correlations, seqeval for entities.

Each task has a ``compute_metrics`` for ``Trainer`` (``metrics_for``) and the same numbers for
its trivial predictor (``baseline_metrics``); the keys are ``shared.tasks.TASK_METRICS``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Imported with the worker, not at a run's first evaluation (scikit-learn takes seconds).
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

from shared.errors import TRAINING_DIVERGED, failure
from shared.tasks import (
    MULTI_LABEL,
    REGRESSION,
    TASK_METRICS,
    TASKS,
    TOKEN_CLASSIFICATION,
    Task,
)

# Every name ``Trainer.evaluate`` may report for some task (it prefixes ``eval_``), kept in
# results and records; single-label's come first, in their first-round order.
EVAL_METRIC_NAMES = tuple(dict.fromkeys(name for task in TASKS for name in TASK_METRICS[task]))
# Multi-label: a label is predicted when its probability is above this.
MULTI_LABEL_THRESHOLD = 0.5
# Positions that carry no label (a word's later sub-tokens, special tokens, padding).
IGNORED = -100


def _logits(prediction: Any) -> Any:
    logits = prediction.predictions
    return logits[0] if isinstance(logits, tuple) else logits


class ClassificationMetrics:
    """Single-label ``compute_metrics``: accuracy and macro F1/precision/recall.

    Macro averages weigh every class equally (over the classes present in the labels or the
    predictions), so a model that ignores a rare class scores low even when accuracy is high.
    The confusion matrix of the latest evaluation is kept for the run's record.
    """

    def __init__(self, num_labels: int) -> None:
        self._labels = list(range(num_labels))
        self.confusion_matrix: list[list[int]] | None = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        predicted = np.argmax(_logits(prediction), axis=-1)
        truth = prediction.label_ids
        self.confusion_matrix = confusion_matrix(truth, predicted, labels=self._labels).tolist()
        return self.score(truth, predicted)

    def restore(self, matrix: list[list[int]]) -> bool:
        """Take a matrix saved with a checkpoint as the latest evaluation's; False (and
        nothing kept) when it is not one of this task's (another number of labels)."""
        size = len(self._labels)
        if len(matrix) != size or any(len(row) != size for row in matrix):
            return False
        self.confusion_matrix = matrix
        return True

    def score(self, truth: Any, predicted: Any) -> dict[str, float]:
        precision, recall, f1, _support = precision_recall_fscore_support(
            truth, predicted, average="macro", zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(truth, predicted)),
            "f1_macro": float(f1),
            "precision_macro": float(precision),
            "recall_macro": float(recall),
        }


class MultiLabelMetrics:
    """Multi-label ``compute_metrics``: a label is predicted when its sigmoid is above 0.5;
    micro and macro F1, micro precision and recall over every (row, label) decision, and the
    subset accuracy (the whole set right), which is also this task's ``eval_accuracy``."""

    confusion_matrix: list[list[int]] | None = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        logits = np.asarray(_logits(prediction), dtype=np.float64)
        predicted = (1.0 / (1.0 + np.exp(-logits)) > MULTI_LABEL_THRESHOLD).astype(int)
        return self.score(np.asarray(prediction.label_ids).astype(int), predicted)

    def score(self, truth: Any, predicted: Any) -> dict[str, float]:
        micro = precision_recall_fscore_support(truth, predicted, average="micro", zero_division=0)
        macro = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
        subset = float(accuracy_score(truth, predicted))
        return {
            "f1_micro": float(micro[2]),
            "f1_macro": float(macro[2]),
            "precision_micro": float(micro[0]),
            "recall_micro": float(micro[1]),
            "subset_accuracy": subset,
            "accuracy": subset,
        }


def _correlation(kind: str, truth: Any, predicted: Any) -> float:
    """Pearson or Spearman by scipy; 0.0 when either side is constant (no correlation is
    defined: a model predicting one value explains nothing)."""
    from scipy import stats

    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if len(truth) < 2 or np.ptp(truth) == 0 or np.ptp(predicted) == 0:
        return 0.0
    found = (
        stats.pearsonr(truth, predicted) if kind == "pearson" else stats.spearmanr(truth, predicted)
    )
    value = float(found[0])
    return value if math.isfinite(value) else 0.0


class RegressionMetrics:
    """Regression ``compute_metrics``: mean squared and absolute error (scikit-learn),
    Pearson and Spearman correlation (scipy)."""

    confusion_matrix: list[list[int]] | None = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        predicted = np.asarray(_logits(prediction), dtype=np.float64).reshape(-1)
        truth = np.asarray(prediction.label_ids, dtype=np.float64).reshape(-1)
        return self.score(truth, predicted)

    def score(self, truth: Any, predicted: Any, correlations: bool = True) -> dict[str, float]:
        scores = {
            "mse": float(mean_squared_error(truth, predicted)),
            "mae": float(mean_absolute_error(truth, predicted)),
        }
        if correlations:
            scores["pearson"] = _correlation("pearson", truth, predicted)
            scores["spearman"] = _correlation("spearman", truth, predicted)
        return scores


class TokenClassificationMetrics:
    """Token-classification ``compute_metrics``: entity-level precision, recall and F1 by
    seqeval (strict IOB2: an entity counts when its type and every boundary match), and
    the per-word accuracy. Only a word's first sub-token carries its tag; the rest are
    ignored (-100)."""

    confusion_matrix: list[list[int]] | None = None

    def __init__(self, label_names: Sequence[str]) -> None:
        self._names = list(label_names)

    def __call__(self, prediction: Any) -> dict[str, float]:
        predicted = np.asarray(_logits(prediction))
        if predicted.ndim == 3:  # logits, not yet reduced by ``reduce_logits``
            predicted = predicted.argmax(axis=-1)
        labels = np.asarray(prediction.label_ids)
        truth_tags: list[list[str]] = []
        predicted_tags: list[list[str]] = []
        for row_labels, row_predicted in zip(labels, predicted, strict=True):
            keep = row_labels != IGNORED
            truth_tags.append([self._names[i] for i in row_labels[keep]])
            predicted_tags.append([self._names[i] for i in row_predicted[keep]])
        return self.score(truth_tags, predicted_tags)

    def score(self, truth: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score
        from seqeval.scheme import IOB2

        words = sum(len(row) for row in truth)
        right = sum(
            t == p
            for rt, rp in zip(truth, predicted, strict=True)
            for t, p in zip(rt, rp, strict=True)
        )
        options: dict[str, Any] = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
        return {
            "f1": float(f1_score(truth, predicted, **options)),
            "precision": float(precision_score(truth, predicted, **options)),
            "recall": float(recall_score(truth, predicted, **options)),
            "accuracy": right / words if words else 0.0,
        }


TaskMetrics = (
    ClassificationMetrics | MultiLabelMetrics | RegressionMetrics | TokenClassificationMetrics
)


def metrics_for(task: Task, label_names: Sequence[str]) -> TaskMetrics:
    """The task's ``compute_metrics`` (single-label keeps each evaluation's confusion matrix)."""
    if task == MULTI_LABEL:
        return MultiLabelMetrics()
    if task == REGRESSION:
        return RegressionMetrics()
    if task == TOKEN_CLASSIFICATION:
        return TokenClassificationMetrics(label_names)
    return ClassificationMetrics(len(label_names))


def reduce_logits(task: Task) -> Any:
    """``preprocess_logits_for_metrics`` for the task: token classification keeps each
    position's best tag instead of every tag's logit (an evaluation set's logits would
    otherwise fill memory: rows x positions x tags); None for the others."""
    if task != TOKEN_CLASSIFICATION:
        return None

    def best_tag(logits: Any, labels: Any) -> Any:
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    return best_tag


def _eval_keys(scores: Mapping[str, float]) -> dict[str, float]:
    return {f"eval_{name}": value for name, value in scores.items()}


def baseline_metrics(
    task: Task,
    train_labels: Sequence[Any],
    eval_labels: Sequence[Any],
    label_names: Sequence[str],
) -> dict[str, float]:
    """The trivial predictor's metrics on the evaluation rows, with ``eval_metrics``' keys:
    the majority class (single-label), the most frequent label set (multi-label), the
    training mean (regression), every word ``O`` (token classification). Metrics a constant
    predictor does not define (the loss, correlations) are left out. Labels are encoded as
    in the prepared data: class ids, multi-hot lists, numbers, lists of tag ids per row."""
    if not eval_labels or not train_labels:
        return {}
    if task == MULTI_LABEL:
        sets = Counter(tuple(int(v) for v in row) for row in train_labels)
        common = np.asarray(sets.most_common(1)[0][0], dtype=int)
        truth = np.asarray([[int(v) for v in row] for row in eval_labels], dtype=int)
        predicted = np.tile(common, (len(truth), 1))
        return _eval_keys(MultiLabelMetrics().score(truth, predicted))
    if task == REGRESSION:
        mean = float(np.mean(np.asarray(train_labels, dtype=np.float64)))
        truth = np.asarray(eval_labels, dtype=np.float64)
        return _eval_keys(
            RegressionMetrics().score(truth, np.full_like(truth, mean), correlations=False)
        )
    if task == TOKEN_CLASSIFICATION:
        names = list(label_names)
        if "O" in names:
            outside = "O"
        else:  # no O tag at all: the most frequent tag plays it
            outside = names[Counter(t for row in train_labels for t in row).most_common(1)[0][0]]
        truth_tags = [[names[t] for t in row] for row in eval_labels]
        predicted_tags = [[outside] * len(row) for row in truth_tags]
        return _eval_keys(TokenClassificationMetrics(names).score(truth_tags, predicted_tags))
    labels = list(train_labels)
    majority = max(set(labels), key=labels.count)
    truth = np.asarray(eval_labels)
    return _eval_keys(
        ClassificationMetrics(len(label_names)).score(truth, np.full_like(truth, majority))
    )


def eval_metrics(raw: Mapping[str, Any], task: Task | None = None) -> dict[str, float]:
    """The documented evaluation metrics out of what ``Trainer.evaluate`` returned (in the
    task's order when it is given)."""
    names = TASK_METRICS[task] if task is not None else EVAL_METRIC_NAMES
    return {name: float(raw[name]) for name in names if name in raw}


def refuse_non_finite(
    train_loss: float,
    final: Mapping[str, float],
    history: Sequence[tuple[int, Mapping[str, float]]],
    learning_rate: float,
) -> None:
    """``TrainingDiverged`` when the training loss or an evaluation metric (the final one
    or one of an epoch, ``(epoch, metrics)``) is NaN or infinite: such a model predicts
    nothing useful, and a record must never hold a number JSON cannot carry."""
    bad = [] if math.isfinite(train_loss) else [f"train_loss is {train_loss}"]
    bad += [f"{name} is {value}" for name, value in final.items() if not math.isfinite(value)]
    bad += [
        f"{name} at epoch {epoch} is {value}"
        for epoch, metrics in history
        for name, value in metrics.items()
        # An epoch's number the final evaluation repeats is named once, above.
        if not math.isfinite(value) and math.isfinite(final.get(name, 0.0))
    ]
    if bad:
        raise failure(
            TRAINING_DIVERGED,
            f"the training diverged: {', '.join(bad[:5])} (not finite); nothing was saved. "
            f"Lower learning_rate (now {learning_rate:g}), set warmup_ratio, or check the data "
            "and the model's weights",
        )
