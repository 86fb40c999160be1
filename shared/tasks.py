"""The tasks a run can fine-tune, and each task's evaluation metrics (names and directions).

Imported by workflows (a sweep's metric is checked against its task), so it stays pure.

- ``single_label_classification``: one label per row (int or string); main metric
  ``eval_f1_macro``;
- ``multi_label_classification``: a list of label names per row (or a string split on
  ``label_separator``); ``eval_f1_micro``;
- ``regression``: a number per row; ``eval_mse``;
- ``token_classification``: a list of words and a list of IOB2 tags, one per word;
  ``eval_f1`` (entity level, seqeval).
"""

from __future__ import annotations

from typing import Literal

Task = Literal[
    "single_label_classification",
    "multi_label_classification",
    "regression",
    "token_classification",
]
SINGLE_LABEL: Task = "single_label_classification"
MULTI_LABEL: Task = "multi_label_classification"
REGRESSION: Task = "regression"
TOKEN_CLASSIFICATION: Task = "token_classification"
TASKS: tuple[Task, ...] = (SINGLE_LABEL, MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION)

# Every task's ``eval_metrics`` keys (``eval_loss`` always). Multi-label's ``eval_accuracy`` is
# its subset accuracy; token classification's is per word; regression has none.
TASK_METRICS: dict[Task, tuple[str, ...]] = {
    SINGLE_LABEL: (
        "eval_accuracy",
        "eval_f1_macro",
        "eval_precision_macro",
        "eval_recall_macro",
        "eval_loss",
    ),
    MULTI_LABEL: (
        "eval_f1_micro",
        "eval_f1_macro",
        "eval_precision_micro",
        "eval_recall_micro",
        "eval_subset_accuracy",
        "eval_accuracy",
        "eval_loss",
    ),
    REGRESSION: ("eval_mse", "eval_mae", "eval_pearson", "eval_spearman", "eval_loss"),
    TOKEN_CLASSIFICATION: (
        "eval_f1",
        "eval_precision",
        "eval_recall",
        "eval_accuracy",
        "eval_loss",
    ),
}
# What ``metric_for_best_model`` means when not given.
MAIN_METRIC: dict[Task, str] = {
    SINGLE_LABEL: "eval_f1_macro",
    MULTI_LABEL: "eval_f1_micro",
    REGRESSION: "eval_mse",
    TOKEN_CLASSIFICATION: "eval_f1",
}
# A sweep's default metric: single-label keeps the first round's ``eval_accuracy``.
SWEEP_DEFAULT_METRIC: dict[Task, str] = {**MAIN_METRIC, SINGLE_LABEL: "eval_accuracy"}
MINIMIZED_METRICS = frozenset({"eval_loss", "eval_mse", "eval_mae"})


def is_minimized(metric: str) -> bool:
    """Whether lower is better for ``metric`` (losses and errors); the rest are maximised."""
    return metric in MINIMIZED_METRICS


def check_metric(task: Task, metric: str, field: str) -> str:
    """``metric`` if the task has it, else a ``ValueError`` naming ``field`` and the choices."""
    if metric not in TASK_METRICS[task]:
        raise ValueError(
            f"{field}: {metric[:60]!r} is not a metric of task {task}; choose one of "
            + ", ".join(TASK_METRICS[task])
        )
    return metric
