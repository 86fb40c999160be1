"""Heartbeats flow in every phase, starting before the first training step."""

from __future__ import annotations

from pathlib import Path

from temporalio.testing import ActivityEnvironment

from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from shared.types import BertFineTuneConfig, BertFineTuneRequest
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway


def test_heartbeats_cover_every_phase_and_carry_progress(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    details: list[dict] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *args: details.append(args[0])
    config = BertFineTuneConfig.model_validate(
        tiny_config(tiny_model, sentiment_csv, checkpoint_steps=20)
    )
    result = env.run(
        TrainingActivities(
            runs_root, OfflineGateway(), local_path_roots=LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
        ).fine_tune_bert,
        BertFineTuneRequest(run_id="beats-run-0-tiny", config=config),
    )
    assert result.eval_accuracy is not None
    # The first heartbeat goes out before any data is loaded, i.e. before any training step.
    assert details[0]["global_step"] == 0 and details[0]["phase"] == "starting"
    required = {"run_id", "global_step", "max_steps", "epoch", "loss", "latest_checkpoint"}
    assert all(required <= set(d) for d in details)
    steps = [d["global_step"] for d in details]
    assert steps == sorted(steps), "global_step never goes backwards"
    checkpointed = [d for d in details if d["latest_checkpoint"]]
    assert checkpointed and checkpointed[0]["global_step"] >= 20
    assert details[-1]["phase"] == "succeeded" and details[-1]["max_steps"] == 80
