"""BERT_TENSORBOARD: event files under the run folder, readable by TensorBoard, and a resumed
attempt hides what the killed one logged past its checkpoint."""

from __future__ import annotations

from pathlib import Path

from temporalio.testing import ActivityEnvironment

from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.tracking.tensorboard_logger import EVENTS_DIR, TensorBoardRunLogger
from services.trainer.tracking.trackers import TrackingConfig
from shared.settings import Settings
from shared.types import BertFineTuneConfig, BertFineTuneRequest
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway

ROOTS = LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_tensorboard_event_files_land_in_the_run_folder(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    settings = Settings.from_env({"BERT_TENSORBOARD": "true"})
    tracking = TrackingConfig.from_settings(settings)
    assert tracking == TrackingConfig(mlflow_tracking_uri=None, tensorboard=True)
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=2)  # 20 steps, logged each step
    result = ActivityEnvironment().run(
        TrainingActivities(
            runs_root, OfflineGateway(), tracking=tracking, local_path_roots=ROOTS
        ).fine_tune_bert,
        BertFineTuneRequest(
            run_id="tb-run-0-tiny", config=BertFineTuneConfig.model_validate(config)
        ),
    )
    log_dir = Path(result.model_dir) / EVENTS_DIR
    loss = _scalars(log_dir, "train/loss")
    assert [step for step, _ in loss] == list(range(1, 21))
    accuracy = _scalars(log_dir, "eval/accuracy")  # evaluated after every epoch
    assert [step for step, _ in accuracy] == [10, 20]
    assert accuracy[-1][1] == result.eval_accuracy


def test_a_resumed_attempt_purges_steps_past_its_checkpoint(tmp_path: Path) -> None:
    killed = TensorBoardRunLogger(tmp_path)
    killed.start(None, {"learning_rate": "0.1"})
    for step in range(1, 8):  # logged up to step 7, checkpointed at 5, then killed
        killed.log_metrics({"loss": 10.0 + step}, step)
    killed.end()
    resumed = TensorBoardRunLogger(tmp_path)
    resumed.start(5, {"learning_rate": "0.1"})
    for step in range(6, 11):
        resumed.log_metrics({"loss": float(step)}, step)
    resumed.end()

    loss = _scalars(tmp_path / EVENTS_DIR, "train/loss")
    assert [step for step, _ in loss] == list(range(1, 11))
    assert dict(loss)[7] == 7.0  # the resumed attempt's value, not the killed one's
