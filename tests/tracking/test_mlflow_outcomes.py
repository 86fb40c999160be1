"""How an attempt ends shows in MLflow: cancelled → KILLED, failed → FAILED, interrupted →
still RUNNING (its retry continues the same run)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment

from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.tracking.trackers import RunTracking, TrackingConfig
from shared.types import BertFineTuneConfig, BertFineTuneRequest, BertFineTuneResult, RunContext
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.durability.harness import long_config, long_run_csv
from tests.helpers.gateway import OfflineGateway
from tests.tracking.conftest import MlflowServer

ROOTS = LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)


def _only_run(server: MlflowServer, experiment: str):  # noqa: ANN202
    client = server.client()
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    assert len(runs) <= 1
    return runs[0] if runs else None


def test_a_cancelled_run_is_marked_killed(
    mlflow_server: MlflowServer, tiny_model: Path, runs_root: Path, tmp_path: Path
) -> None:
    train, validation = long_run_csv(tmp_path)  # 1,000 steps
    request = BertFineTuneRequest(
        run_id="cancelme-run-0-tiny",
        config=BertFineTuneConfig.model_validate(long_config(tiny_model, train, validation)),
    )
    env = ActivityEnvironment()
    activities = TrainingActivities(
        runs_root,
        OfflineGateway(),
        tracking=TrackingConfig(mlflow_server.uri),
        local_path_roots=ROOTS,
    )
    raised: list[BaseException] = []

    def train_run() -> None:
        try:
            env.run(activities.fine_tune_bert, request)
        except BaseException as err:  # noqa: BLE001 (handed to the test thread)
            raised.append(err)

    trainer = threading.Thread(target=train_run)
    trainer.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = _only_run(mlflow_server, "cancelme")
        if run is not None and "loss" in run.data.metrics:
            break
        time.sleep(0.2)
    env.cancel()
    trainer.join(60)
    assert not trainer.is_alive() and isinstance(raised[0], CancelledError)

    run = _only_run(mlflow_server, "cancelme")
    assert run.info.status == "KILLED"
    assert run.data.tags["bert_finetune.state"] == "cancelled"
    assert not (runs_root / request.run_id).exists()  # the partial run is gone as before


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("failed", "FAILED"), ("interrupted", "RUNNING"), ("succeeded", "FINISHED")],
)
def test_attempt_outcomes_map_to_mlflow_statuses(
    mlflow_server: MlflowServer, tmp_path: Path, outcome: str, status: str
) -> None:
    experiment = f"outcome-{outcome}"
    run_dir = tmp_path / f"{experiment}-run-0-tiny"
    run_dir.mkdir()
    request = BertFineTuneRequest(
        run_id=run_dir.name, config=BertFineTuneConfig(model_name="tiny", train_file="t.csv")
    )
    tracking = RunTracking(TrackingConfig(mlflow_server.uri), request, 1, run_dir)
    tracking.begin(resumed_from_step=None, max_steps=10, params={}, tags={})
    tracking.log_metrics({"loss": 0.5}, 1)
    tracking.training_stopped(1, 0.1)
    tracking.end(outcome)

    assert tracking.mlflow.run_id_ready.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = _only_run(mlflow_server, experiment)
        if (
            run is not None
            and run.data.tags.get("bert_finetune.state") == outcome
            and run.info.status == status
        ):
            break
        time.sleep(0.2)
    assert run.info.status == status
    assert run.data.metrics["loss"] == 0.5


async def test_a_run_cancelled_between_attempts_is_marked_killed(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    from services.trainer.registry import orchestration_activities
    from services.trainer.run_folder import ownership

    runs_root = tmp_path / "runs"
    run_dir = runs_root / "between-run-0-tiny"
    run_dir.mkdir(parents=True)
    env = ActivityEnvironment()
    ownership.claim(run_dir, env.info.workflow_id, lambda _: False)
    tracking_config = TrackingConfig(mlflow_server.uri)
    request = BertFineTuneRequest(
        run_id=run_dir.name, config=BertFineTuneConfig(model_name="tiny", train_file="t.csv")
    )
    preempted = RunTracking(tracking_config, request, 1, run_dir)
    preempted.begin(resumed_from_step=None, max_steps=10, params={}, tags={})
    preempted.end("interrupted")  # stays RUNNING, waiting for a retry that never comes
    assert preempted.mlflow.run_id_ready.wait(30)

    # The local activity a workflow runs when it is cancelled while no attempt is running.
    discard = orchestration_activities(runs_root, tracking_config)[0]
    assert await env.run(discard, run_dir.name)
    assert not run_dir.exists()
    deadline = time.monotonic() + 30
    while (run := _only_run(mlflow_server, "between")).info.status != "KILLED":
        assert time.monotonic() < deadline, run.info.status
        await asyncio.sleep(0.2)
    assert run.data.tags["bert_finetune.state"] == "cancelled"


def test_a_halving_trial_pauses_running_and_ends_pruned_in_one_mlflow_run(
    mlflow_server: MlflowServer, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    config = BertFineTuneConfig.model_validate(
        tiny_config(tiny_model, sentiment_csv, num_epochs=3)  # 10 steps per epoch
    )
    activities = TrainingActivities(
        runs_root,
        OfflineGateway(),
        tracking=TrackingConfig(mlflow_server.uri),
        local_path_roots=ROOTS,
    )

    def execute(**segment: object) -> BertFineTuneResult:
        request = BertFineTuneRequest(
            run_id="rungs-run-0-tiny",
            config=config,
            context=RunContext(kind="sweep", name="rungs", trial_index=0, params={}),
            **segment,
        )
        return ActivityEnvironment().run(activities.fine_tune_bert, request)

    def trial():  # noqa: ANN202
        runs = mlflow_server.client().search_runs(
            [mlflow_server.client().get_experiment_by_name("rungs").experiment_id],
            filter_string="tags.`bert_finetune.role` = 'trial'",
        )
        assert len(runs) == 1  # every segment continues the same MLflow run
        return runs[0]

    paused = execute(pause_at_epoch=1)
    assert paused.paused
    run = trial()
    assert run.info.status == "RUNNING" and run.data.tags["bert_finetune.state"] == "paused"

    # The sweep prunes it at this rung: the next execution commits the paused checkpoint
    # without training (no Trainer callback runs) and still closes the MLflow run.
    pruned = execute(finish_at_epoch=1, attempt_offset=5)
    assert pruned.stopped_early
    deadline = time.monotonic() + 30
    while (run := trial()).info.status != "FINISHED":
        assert time.monotonic() < deadline, run.info.status
        time.sleep(0.2)
    assert run.data.tags["bert_finetune.state"] == "pruned"
    steps = [p.step for p in mlflow_server.client().get_metric_history(run.info.run_id, "loss")]
    assert steps == list(range(1, 11))  # the first epoch's curve, logged once
