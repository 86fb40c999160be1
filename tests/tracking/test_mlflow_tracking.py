"""The fine-tune activity logs a run to a real MLflow server: params, curves, tags, confusion
matrix, final status; and a tracker outage never fails or holds up training."""

from __future__ import annotations

import json
import time
from pathlib import Path

from temporalio.testing import ActivityEnvironment

from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.tracking.mlflow_logger import TRACKING_KEY_TAG, MlflowRunLogger, RunSpec
from services.trainer.tracking.trackers import TRACKING_FILE, TrackingConfig
from shared import metrics
from shared.temporal import free_loopback_port
from shared.types import (
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertFineTuneResult,
    RunContext,
)
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway
from tests.tracking.conftest import MlflowServer

ROOTS = LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)


def _train(
    runs_root: Path, tracking: TrackingConfig, run_id: str, config: dict
) -> BertFineTuneResult:
    request = BertFineTuneRequest(run_id=run_id, config=BertFineTuneConfig.model_validate(config))
    return ActivityEnvironment().run(
        TrainingActivities(
            runs_root, OfflineGateway(), tracking=tracking, local_path_roots=ROOTS
        ).fine_tune_bert,
        request,
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
    deadline = time.monotonic() + 60  # the sender's first try also imports mlflow
    while not logger.failing and time.monotonic() < deadline:
        time.sleep(0.1)
    ended = time.monotonic()
    logger.end("FINISHED")
    end_s = time.monotonic() - ended
    assert _errors() > errors_before
    # 10,000 points queue in well under the time of one training step...
    assert logging_s < 1.0, logging_s
    # ...and ending does not wait out the full end_timeout once MLflow is known to be down.
    assert end_s < 2.0, end_s


def test_sweep_trials_are_child_runs_of_one_parent_run(
    mlflow_server: MlflowServer, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    sweep = "tsweep"
    tracking = TrackingConfig(mlflow_server.uri)
    results = []
    for trial, learning_rate in enumerate((0.005, 0.0005)):
        config = tiny_config(tiny_model, sentiment_csv, num_epochs=1, learning_rate=learning_rate)
        request = BertFineTuneRequest(
            run_id=f"{sweep}-run-{trial}-tiny",
            config=BertFineTuneConfig.model_validate(config),
            context=RunContext(
                kind="sweep", name=sweep, trial_index=trial, params={"learning_rate": learning_rate}
            ),
        )
        results.append(
            ActivityEnvironment().run(
                TrainingActivities(
                    runs_root, OfflineGateway(), tracking=tracking, local_path_roots=ROOTS
                ).fine_tune_bert,
                request,
            )
        )

    client = mlflow_server.client()
    experiment = client.get_experiment_by_name(sweep)  # one MLflow experiment per sweep
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("bert_finetune.role") == "sweep"]
    children = sorted(
        (run for run in runs if run.data.tags.get("bert_finetune.role") == "trial"),
        key=lambda run: int(run.data.tags["bert_finetune.run_index"]),
    )
    assert len(runs) == 3 and parent.info.run_name == sweep
    assert [run.info.run_name for run in children] == [r.run_id for r in results]
    for child, result in zip(children, results, strict=True):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["bert_finetune.sweep"] == sweep
        assert child.data.tags["bert_finetune.searched_params"] == "learning_rate"
        assert child.data.tags["bert_finetune.state"] == "succeeded"
        # What MLflow's compare and parallel-coordinates views plot: params against metrics.
        assert float(child.data.params["learning_rate"]) == result.config.learning_rate
        assert child.data.metrics["eval_accuracy"] == result.eval_accuracy
        assert child.data.metrics["pruned"] == 0.0


def test_trials_starting_together_agree_on_one_parent_run(mlflow_server: MlflowServer) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from services.trainer.tracking.mlflow_logger import experiment_id_for, sweep_parent_run

    experiment_id = experiment_id_for(mlflow_server.client(), "race")
    barrier = Barrier(3)

    def trial() -> str:
        client = mlflow_server.client()
        barrier.wait()
        return sweep_parent_run(client, experiment_id, "race")

    with ThreadPoolExecutor(3) as pool:
        parents = [future.result() for future in [pool.submit(trial) for _ in range(3)]]
    assert len(set(parents)) == 1
    (remaining,) = mlflow_server.client().search_runs([experiment_id])
    assert remaining.info.run_id == parents[0]


def test_points_kept_while_the_tracker_is_down_are_bounded() -> None:
    logger = MlflowRunLogger(
        f"http://127.0.0.1:{free_loopback_port()}", max_pending_metrics=100, flush_interval=0.1
    )
    dropped = metrics.TRACKING_RECORDS_DROPPED.labels(tracker="mlflow")
    before = dropped._value.get()
    logger.start(RunSpec("unreachable", "unreachable-run-1-x", "key-2", {}), {})
    for step in range(1, 1001):
        logger.log_metrics({"loss": 1.0}, step)
    logger.end("FINISHED")
    deadline = time.monotonic() + 10
    while dropped._value.get() - before < 900 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dropped._value.get() - before == 900  # the newest 100 are kept for a retry


def test_closing_a_sweep_finishes_its_parent_and_the_next_sweep_gets_a_new_one(
    mlflow_server: MlflowServer,
) -> None:
    from services.trainer.tracking.mlflow_logger import (
        close_sweep_run,
        experiment_id_for,
        sweep_parent_run,
    )

    client = mlflow_server.client()
    experiment_id = experiment_id_for(client, "closing")
    parent = sweep_parent_run(client, experiment_id, "closing", settle_seconds=0)
    closed = close_sweep_run(
        mlflow_server.uri,
        "closing",
        "FINISHED",
        summary={"best_eval_accuracy": 0.9},
        tags={"bert_finetune.best_run_id": "closing-run-1-tiny"},
    )
    assert closed == parent
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_eval_accuracy"] == 0.9
    assert run.data.tags["bert_finetune.best_run_id"] == "closing-run-1-tiny"
    # A later run of the same sweep name starts a fresh parent instead of reopening this one.
    assert sweep_parent_run(client, experiment_id, "closing", settle_seconds=0) != parent
