"""An in-memory stand-in for Temporal in activity tests run by ``ActivityEnvironment``."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.types import TrainingProgress


@dataclass
class RecordingChannel:
    """Keeps every progress signal; reports a history that grows with them."""

    signals: list[TrainingProgress] = field(default_factory=list)
    events_per_signal: int = 4

    def signal(self, progress: TrainingProgress) -> None:
        self.signals.append(progress)

    def history_length(self) -> int:
        return len(self.signals) * self.events_per_signal


@dataclass
class OfflineGateway:
    """Progress signals are recorded per workflow id; no other workflow is ever running."""

    channels: dict[str, RecordingChannel] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)

    def progress_channel(self, workflow_id: str, run_id: str | None) -> RecordingChannel:
        return self.channels.setdefault(workflow_id, RecordingChannel())

    def is_running(self, workflow_id: str) -> bool:
        return workflow_id in self.running
