"""Where the training core reports progress, as a protocol: it never imports Temporal.

The activity's ``ProgressReporter`` (``activities/progress.py``) heartbeats it; in a
distributed attempt the leader rank relays it through ``rank_channel``.
"""

from __future__ import annotations

from typing import Any, Protocol

from shared.types import TrainingProgress


class ProgressSink(Protocol):
    """Where training reports progress: the activity's ``ProgressReporter``, or in a
    distributed attempt the leader's relay to it (``rank_channel``)."""

    @property
    def progress(self) -> TrainingProgress: ...

    def update(self, **fields: Any) -> None: ...

    def heartbeat_now(self) -> None: ...

    def signal_soon(self) -> None: ...

    def progressed(self) -> None: ...
