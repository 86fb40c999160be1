"""Evaluation metrics of a classifier, computed by scikit-learn (not by hand)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Imported with the worker, not at a run's first evaluation (scikit-learn takes seconds).
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from shared.errors import TRAINING_DIVERGED, failure

# The names ``Trainer.evaluate`` reports (it prefixes ``eval_``), kept in results and records.
EVAL_METRIC_NAMES = (
    "eval_accuracy",
    "eval_f1_macro",
    "eval_precision_macro",
    "eval_recall_macro",
    "eval_loss",
)


class ClassificationMetrics:
    """``compute_metrics`` for ``Trainer``: accuracy and macro F1/precision/recall.

    Macro averages weigh every class equally (over the classes present in the labels or the
    predictions), so a model that ignores a rare class scores low even when accuracy is high.
    The confusion matrix of the latest evaluation is kept for the run's record.
    """

    def __init__(self, num_labels: int) -> None:
        self._labels = list(range(num_labels))
        self.confusion_matrix: list[list[int]] | None = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        predicted = np.argmax(logits, axis=-1)
        truth = prediction.label_ids
        precision, recall, f1, _support = precision_recall_fscore_support(
            truth, predicted, average="macro", zero_division=0
        )
        self.confusion_matrix = confusion_matrix(truth, predicted, labels=self._labels).tolist()
        return {
            "accuracy": float(accuracy_score(truth, predicted)),
            "f1_macro": float(f1),
            "precision_macro": float(precision),
            "recall_macro": float(recall),
        }


def eval_metrics(raw: dict[str, Any]) -> dict[str, float]:
    """The documented evaluation metrics out of what ``Trainer.evaluate`` returned."""
    return {name: float(raw[name]) for name in EVAL_METRIC_NAMES if name in raw}


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
