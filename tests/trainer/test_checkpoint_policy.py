"""The default checkpoint policy: by time, none on a short run, yet a preemption still seals
one that the next attempt resumes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder import checkpoints
from services.trainer.run_folder.paths import LocalPathRoots
from shared import metrics
from shared.types import BertFineTuneConfig, BertFineTuneRequest
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway


def test_short_runs_write_no_checkpoint_but_a_shutdown_seals_one_to_resume_from(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    config = BertFineTuneConfig.model_validate(tiny_config(tiny_model, sentiment_csv))
    assert config.checkpoint_steps is None  # the default, time-based policy
    activities = TrainingActivities(
        runs_root, OfflineGateway(), local_path_roots=LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
    )
    run_dir = runs_root / "policy-run-0-tiny"

    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: (
        env.worker_shutdown() if details[0]["global_step"] >= 25 else None
    )
    with pytest.raises(ApplicationError) as interrupted:
        env.run(activities.fine_tune_bert, BertFineTuneRequest(run_id=run_dir.name, config=config))
    assert interrupted.value.type == "WorkerShutdown" and not interrupted.value.non_retryable
    (sealed,) = checkpoints.sealed_checkpoints(run_dir)
    sealed_step = int(sealed.name.removeprefix("checkpoint-"))
    assert sealed_step >= 25

    saved_before = metrics.CHECKPOINTS._value.get()
    retry = ActivityEnvironment()
    result = retry.run(
        activities.fine_tune_bert,
        BertFineTuneRequest(run_id=run_dir.name, config=config, attempt_offset=1),
    )
    assert result.resumed_from_step == sealed_step
    assert metrics.CHECKPOINTS._value.get() == saved_before, "no timed checkpoint in 10 minutes"
    assert (run_dir / "run.json").is_file() and not (run_dir / "checkpoints").exists()
