"""The Trainer callback that feeds a run's experiment trackers (see ``tracking.py``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from transformers import TrainerCallback

from services.trainer.tracking.trackers import RunTracking

Hook = TypeVar("Hook", bound=Callable[..., None])


def never_raises(hook: Hook) -> Hook:
    """Tracking is best effort: a failing hook is logged and counted, training goes on."""

    @functools.wraps(hook)
    def guarded(self: TrackingCallback, *args: Any, **kwargs: Any) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception:
            self._tracking.count_error(hook.__name__)

    return guarded  # type: ignore[return-value]


class TrackingCallback(TrainerCallback):
    """Params when training begins, every logged number at its step, each confusion matrix."""

    def __init__(self, tracking: RunTracking) -> None:
        self._tracking = tracking

    @never_raises
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._tracking.begin(
            # global_step is already the checkpoint's step when the Trainer resumed.
            resumed_from_step=state.global_step or None,
            max_steps=state.max_steps,
            params={
                "max_steps": str(state.max_steps),
                "checkpoint_steps": str(args.save_steps),
                "logging_steps": str(args.logging_steps),
                "eval_strategy": str(getattr(args.eval_strategy, "value", args.eval_strategy)),
            },
            tags={"bert_finetune.device": args.device.type},
        )

    @never_raises
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        numbers = {
            key: float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self._tracking.log_metrics(numbers, state.global_step)

    @never_raises
    def on_evaluate(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        labels = [str(id2label[i]) for i in sorted(id2label)]
        self._tracking.log_confusion_matrix(labels, state.global_step)

    @never_raises
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._tracking.training_stopped(state.global_step, float(state.epoch or 0.0))
