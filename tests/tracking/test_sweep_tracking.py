"""A sweep through Temporal with a trainer that tracks to a real MLflow server: one MLflow
experiment, one parent run closed by the sweep itself, one child run per trial."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from temporalio.client import Client

from services.trainer.tracking.trackers import TrackingConfig
from services.trainer.worker import build_trainer_worker
from shared.sweep_types import SWEEP_WORKFLOW, BertSweepInput, BertSweepOutput
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.tracking.conftest import MlflowServer


async def test_a_sweep_is_one_parent_run_with_a_child_per_trial(
    client: Client,
    mlflow_server: MlflowServer,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
) -> None:
    sweep = BertSweepInput.model_validate(
        {
            "sweep_name": "tracked-sweep",
            "base": tiny_config(tiny_model, sentiment_csv, num_epochs=1),
            "space": {"learning_rate": {"values": [0.001, 0.005]}},
            "strategy": "grid",
            "max_concurrent_trials": 2,
        }
    )
    queue = "tracked-sweep-queue"
    worker = build_trainer_worker(
        client,
        task_queue=queue,
        runs_root=runs_root,
        max_concurrent_activities=2,
        graceful_shutdown=timedelta(seconds=5),
        tracking=TrackingConfig(mlflow_server.uri),
        local_path_roots=TEST_LOCAL_PATH_ROOTS,
    )
    async with worker:
        output = await client.execute_workflow(
            SWEEP_WORKFLOW,
            sweep,
            id="tracked-sweep",
            task_queue=queue,
            result_type=BertSweepOutput,
        )

    mlflow = mlflow_server.client()
    experiment = mlflow.get_experiment_by_name("tracked-sweep")
    runs = mlflow.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("bert_finetune.role") == "sweep"]
    children = [run for run in runs if run.info.run_id != parent.info.run_id]
    assert parent.info.status == "FINISHED"  # closed by the sweep's last step
    assert parent.data.tags["bert_finetune.best_run_id"] == output.best_run_id
    assert parent.data.metrics["best_eval_accuracy"] == output.best_metric
    assert len(children) == 2
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {parent.info.run_id}
    assert all(child.info.status == "FINISHED" for child in children)
