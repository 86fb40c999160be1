"""The progress signaller keeps the receiving workflow's history inside its budget."""

from __future__ import annotations

from services.trainer.progress import ProgressSignaller
from shared.types import TrainingProgress
from tests.helpers.gateway import RecordingChannel


def test_signals_everything_until_the_history_budget_then_only_milestones() -> None:
    channel = RecordingChannel(events_per_signal=4)
    signal = ProgressSignaller(channel, history_budget=20, check_every=2)
    for step in range(6):  # 6 signals = 24 events, over the budget at the 6th check
        signal(TrainingProgress(run_id="r", phase="training", global_step=step))
    assert len(channel.signals) == 6 and signal.coarse
    signal(TrainingProgress(run_id="r", phase="training", global_step=7))
    assert len(channel.signals) == 6, "a repeated milestone is not signalled past the budget"
    signal(TrainingProgress(run_id="r", phase="training", latest_checkpoint="c-8"))
    signal(TrainingProgress(run_id="r", phase="evaluating", latest_checkpoint="c-8"))
    assert [s.phase for s in channel.signals[-2:]] == ["training", "evaluating"]
