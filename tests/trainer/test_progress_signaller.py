"""The progress signaller keeps the receiving workflow's history inside its budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.activities.progress import ProgressSignaller
from shared.types import BertFineTuneConfig, BertFineTuneRequest, TrainingProgress
from tests.helpers.gateway import OfflineGateway, RecordingChannel


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


def test_progress_goes_to_the_requested_workflow_else_to_the_caller(tmp_path: Path) -> None:
    config = BertFineTuneConfig(train_file=str(tmp_path / "missing.csv"))
    for target, expected in (("sweep-parent", "sweep-parent"), (None, "test")):
        gateway = OfflineGateway()
        request = BertFineTuneRequest(
            run_id="signals-run-0-m", config=config, progress_workflow_id=target
        )
        with pytest.raises(ApplicationError):  # the data is missing: it fails fast
            ActivityEnvironment().run(
                TrainingActivities(tmp_path / "runs", gateway).fine_tune_bert, request
            )
        assert list(gateway.channels) == [expected]  # ActivityEnvironment's workflow: "test"
        assert gateway.channels[expected].signals[0].run_id == "signals-run-0-m"
