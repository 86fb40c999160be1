"""TensorBoard event files under the run folder, for users without a tracking server.

``SummaryWriter`` already writes from its own thread; what is left here is resuming
cleanly: a retried attempt opens the writer with ``purge_step`` just past the checkpoint
it resumed from, so TensorBoard hides what the killed attempt logged after that step and
each curve reads as one continuous series. Write errors are counted, never raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared import metrics
from shared.logging import get_logger

log = get_logger(__name__)

TRACKER = "tensorboard"
EVENTS_DIR = "tensorboard"


def scalar_tag(key: str) -> str:
    """Group scalars the way Hugging Face's TensorBoard callback does: train/…, eval/…."""
    if key.startswith("eval_"):
        return f"eval/{key.removeprefix('eval_')}"
    return f"train/{key}"  # the final ``train_loss`` stays apart from the per-step ``loss``


class TensorBoardRunLogger:
    """Event files in ``{run_dir}/tensorboard``; one writer per attempt."""

    def __init__(self, run_dir: Path) -> None:
        self._log_dir = run_dir / EVENTS_DIR
        self._writer: Any = None

    def _guard(self, what: str, action: Any, *args: Any, **kwargs: Any) -> None:
        if self._writer is None:
            return
        try:
            action(*args, **kwargs)
        except Exception as err:  # a full disk must not stop training
            metrics.TRACKING_ERRORS.labels(tracker=TRACKER).inc()
            log.warning("tracking.tensorboard_error", action=what, error_type=type(err).__name__)

    def start(self, resumed_from_step: int | None, params: dict[str, str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge_step = resumed_from_step + 1 if resumed_from_step is not None else None
            self._writer = SummaryWriter(log_dir=str(self._log_dir), purge_step=purge_step)
        except Exception as err:
            metrics.TRACKING_ERRORS.labels(tracker=TRACKER).inc()
            log.warning("tracking.tensorboard_error", action="open", error_type=type(err).__name__)
            return
        table = "\n".join(f"| {key} | {value} |" for key, value in sorted(params.items()))
        self._guard(
            "params",
            self._writer.add_text,
            "params",
            f"| param | value |\n|---|---|\n{table}",
            resumed_from_step or 0,
        )

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self._guard("scalar", self._writer.add_scalar, scalar_tag(key), value, step)

    def log_confusion_matrix(self, labels: list[str], matrix: list[list[int]], step: int) -> None:
        header = "| true \\ predicted | " + " | ".join(labels) + " |"
        rule = "|---" * (len(labels) + 1) + "|"
        rows = [
            f"| {label} | " + " | ".join(map(str, row)) + " |"
            for label, row in zip(labels, matrix, strict=True)
        ]
        text = "\n".join([header, rule, *rows])
        self._guard("confusion_matrix", self._writer.add_text, "eval/confusion_matrix", text, step)

    def end(self) -> None:
        if self._writer is not None:
            self._guard("close", self._writer.close)
            self._writer = None
