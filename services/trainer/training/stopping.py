"""When an attempt must stop early: a user's cancel, or its worker shutting down."""

from __future__ import annotations

from collections.abc import Callable


class TrainingCancelled(Exception):
    """The user cancelled the run; its partial output is removed."""


class TrainingInterrupted(Exception):
    """The attempt stopped early (worker shutdown or superseded); a retry resumes it."""


class StopControl:
    """The one stop check of a training attempt.

    ``check`` is called between stages; ``StopCallback`` polls the same signals at every
    optimizer step and records here why training stopped.
    """

    def __init__(
        self, cancel_requested: Callable[[], bool], shutdown_requested: Callable[[], bool]
    ) -> None:
        self.cancel_requested = cancel_requested
        self.shutdown_requested = shutdown_requested
        self.cancelled = False
        self.interrupted_at_step: int | None = None

    def check(self, *, trained: bool = False) -> None:
        """Raise if the attempt must stop here.

        Before training, a shutdown hands the run to another worker at once (nothing is lost).
        Once trained (``trained=True``) only a cancel or a checkpoint-and-stop stops it: the
        remaining stages are quicker than a retry.
        """
        if self.cancelled or self.cancel_requested():
            raise TrainingCancelled()
        if self.interrupted_at_step is not None:
            raise TrainingInterrupted(
                f"worker shutting down; checkpoint saved at step {self.interrupted_at_step}"
            )
        if not trained and self.shutdown_requested():
            raise TrainingInterrupted("worker shutting down before training started")
