"""The fine-tune activity logs a run to a real MLflow server: params, curves, tags, confusion
matrix, final status; and a tracker outage never fails or holds up training."""

from __future__ import annotations

import json
import time
from pathlib import Path

from temporalio.testing import ActivityEnvironment

from services.trainer.activities import TrainingActivities
from services.trainer.mlflow_logger import TRACKING_KEY_TAG, MlflowRunLogger, RunSpec
from services.trainer.tracking import TRACKING_FILE, TrackingConfig
from shared import metrics
from shared.temporal import free_loopback_port
from shared.types import BertFineTuneConfig, BertFineTuneRequest, BertFineTuneResult
from tests.conftest import SentimentData, tiny_config
from tests.tracking.conftest import MlflowServer


def _train(
    runs_root: Path, tracking: TrackingConfig, run_id: str, config: dict
) -> BertFineTuneResult:
    request = BertFineTuneRequest(run_id=run_id, config=BertFineTuneConfig.model_validate(config))
    return ActivityEnvironment().run(
        TrainingActivities(runs_root, tracking=tracking).fine_tune_bert, request
    )


def _errors() -> float:
    return metrics.TRACKING_ERRORS.labels(tracker="mlflow")._value.get()


def test_a_run_lands_in_mlflow_with_params_curves_tags_and_confusion_matrix(
    mlflow_server: MlflowServer, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=2)  # 160 rows / 16: 20 steps
    run_id = "tracked-run-0-tiny"
    result = _train(runs_root, TrackingConfig(mlflow_server.uri), run_id, config)

    client = mlflow_server.client()
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_id and run.info.status == "FINISHED"
    params = run.data.params
    assert params["learning_rate"] == "0.005" and params["num_epochs"] == "2"
    assert params["model_name"] == str(tiny_model) and params["max_steps"] == "20"
    tags = run.data.tags
    assert tags["bert_finetune.run_id"] == run_id
    assert tags["bert_finetune.experiment"] == "tracked"
    assert tags["bert_finetune.attempt"] == "1"
    assert tags["bert_finetune.model_dir"] == result.model_dir
    assert tags["bert_finetune.state"] == "succeeded"
    # The run folder's tracking key is the one the MLflow run carries.
    key = json.loads((Path(result.model_dir) / TRACKING_FILE).read_text())["tracking_key"]
    assert tags[TRACKING_KEY_TAG] == key

    # A loss and a learning rate at every logged step (20 steps: logging_steps is 1).
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [point.step for point in loss] == list(range(1, 21))
    learning_rate = client.get_metric_history(run.info.run_id, "learning_rate")
    assert [point.step for point in learning_rate] == list(range(1, 21))
    assert learning_rate[0].value > learning_rate[-1].value  # the linear decay is visible
    # Final metrics: evaluation and the Trainer's own training summary.
    assert run.data.metrics["eval_accuracy"] == result.eval_accuracy
    assert run.data.metrics["train_loss"] == result.train_loss
    assert run.data.metrics["pruned"] == 0.0 and run.data.metrics["epochs_completed"] == 2.0

    table_path = client.download_artifacts(
        run.info.run_id, "confusion_matrix/step-0000020.json", str(runs_root.parent)
    )
    table = json.loads(Path(table_path).read_text())
    assert table["columns"] == ["true_label", "negative", "positive"]
    counts = [row[1:] for row in table["data"]]
    assert sum(map(sum, counts)) == result.num_eval_samples == 40
    correct = counts[0][0] + counts[1][1]
    assert correct / 40 == result.eval_accuracy


def test_training_succeeds_quickly_while_the_tracker_is_down(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    closed = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    errors_before = _errors()
    result = _train(
        runs_root,
        TrackingConfig(closed),
        "offline-run-0-tiny",
        tiny_config(tiny_model, sentiment_csv, num_epochs=1),
    )
    assert result.eval_accuracy is not None and Path(result.model_dir, "run.json").is_file()
    assert _errors() > errors_before


def test_logging_never_blocks_the_training_thread_and_end_is_bounded() -> None:
    logger = MlflowRunLogger(f"http://127.0.0.1:{free_loopback_port()}", end_timeout=5)
    errors_before = _errors()
    logger.start(RunSpec("unreachable", "unreachable-run-0-x", "key", {}), {"lr": "0.1"})
    started = time.monotonic()
    for step in range(1, 5001):
        logger.log_metrics({"loss": 1.0 / step, "learning_rate": 0.1}, step)
    logging_s = time.monotonic() - started
    time.sleep(1.5)  # let the sender fail at least once
    ended = time.monotonic()
    logger.end("FINISHED")
    end_s = time.monotonic() - ended
    assert _errors() > errors_before
    # 10,000 points queue in well under the time of one training step...
    assert logging_s < 1.0, logging_s
    # ...and ending does not wait out the full end_timeout once MLflow is known to be down.
    assert end_s < 2.0, end_s
