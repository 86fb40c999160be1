"""SIGKILL a real trainer process mid-run: the retry continues the same MLflow run, and every
metric series stays one continuous, non-duplicated sequence of steps."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.client import Client

from services.trainer.run_folder import checkpoints
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.durability.harness import long_config, long_run_csv, task_queue
from tests.helpers.processes import WorkerProcess
from tests.tracking.conftest import MlflowServer

LOGGING_STEPS = 50  # the default policy: max_steps // 20, at most 50
MAX_STEPS = 2000  # 2,000 rows / batch 4 * 4 epochs


def _logged_loss_steps(server: MlflowServer, experiment: str) -> list[int]:
    client = server.client()
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    if not runs:
        return []
    return [point.step for point in client.get_metric_history(runs[0].info.run_id, "loss")]


def _newest_sealed_step(run_dir: Path) -> int:
    sealed = checkpoints.sealed_checkpoints(run_dir)
    return int(sealed[0].name.split("-")[1]) if sealed else 0


async def _freeze_after_a_logged_step_past_the_checkpoint(
    worker: WorkerProcess, server: MlflowServer, experiment: str, run_dir: Path
) -> tuple[int, int]:
    """Stop the worker (SIGSTOP) at a moment when MLflow already holds a loss logged after
    the newest sealed checkpoint, so the retry must skip steps the killed attempt logged."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        worker.signal(signal.SIGSTOP)
        logged = await asyncio.to_thread(_logged_loss_steps, server, experiment)
        checkpoint = _newest_sealed_step(run_dir)
        if checkpoint and logged and checkpoint < max(logged) < MAX_STEPS:
            return checkpoint, max(logged)
        worker.signal(signal.SIGCONT)
    raise TimeoutError("never saw a logged step past a sealed checkpoint")


@pytest.mark.slow
async def test_sigkill_and_resume_continue_one_mlflow_run_without_duplicate_steps(
    client: Client,
    mlflow_server: MlflowServer,
    tiny_model: Path,
    runs_root: Path,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    experiment = f"mlflow-kill9-{uuid.uuid4().hex[:8]}"
    train, validation = long_run_csv(tmp_path, rows=2000)
    config = long_config(tiny_model, train, validation, checkpoint_steps=400)
    tracking_env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    first = WorkerProcess(
        address, queue, runs_root, tmp_path / "worker-1.log", extra_env=tracking_env
    )
    second: WorkerProcess | None = None
    try:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            BertExperimentInput.model_validate(
                {"experiment_name": experiment, "runs": [config], "heartbeat_timeout_seconds": 5}
            ),
            id=f"{experiment}-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )
        run_dir = (
            runs_root
            / BertExperimentInput.model_validate(
                {"experiment_name": experiment, "runs": [config]}
            ).run_ids()[0]
        )
        checkpoint, last_logged = await _freeze_after_a_logged_step_past_the_checkpoint(
            first, mlflow_server, experiment, run_dir
        )
        killed_at = time.time()
        first.signal(signal.SIGKILL)
        assert await first.wait(10) == -signal.SIGKILL
        second = WorkerProcess(
            address, queue, runs_root, tmp_path / "worker-2.log", extra_env=tracking_env
        )
        (result,) = (await asyncio.wait_for(handle.result(), timeout=300)).runs
        assert result.resumed_from_step == checkpoint

        mlflow = mlflow_server.client()
        found = mlflow.get_experiment_by_name(experiment)
        (run,) = mlflow.search_runs([found.experiment_id])  # one MLflow run, not one per attempt
        assert run.info.status == "FINISHED"
        assert run.data.tags["bert_finetune.attempt"] == "2"
        assert run.data.tags["bert_finetune.resumed_from_step"] == str(checkpoint)
        for key in ("loss", "learning_rate", "grad_norm"):
            history = mlflow.get_metric_history(run.info.run_id, key)
            steps = [point.step for point in history]
            # Every logged step exactly once, in order, with no gap where the worker died.
            # (the first step is logged too: progress shows a loss from the start).
            assert steps == [1, *range(LOGGING_STEPS, MAX_STEPS + 1, LOGGING_STEPS)], key
            # Steps the killed attempt had logged past its checkpoint were not sent again.
            for point in history:
                if checkpoint < point.step <= last_logged:
                    assert point.timestamp / 1000 < killed_at, (key, point.step)
        retry_continued = second.events("tracking.mlflow_run_continued")
        assert retry_continued and retry_continued[0]["mlflow_run_id"] == run.info.run_id
        record_property("resumed_from_step", checkpoint)
        record_property("last_logged_before_kill", last_logged)
    finally:
        for worker in (first, second):
            if worker is not None:
                if worker.process.poll() is None:
                    worker.signal(signal.SIGCONT)
                worker.stop()
