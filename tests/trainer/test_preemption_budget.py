"""Preemptions do not use up the crash-retry budget: the workflow re-executes the activity.

The activity here is a stand-in registered under ``fine_tune_bert`` that reports a
preemption (``WorkerShutdown``) a number of times before succeeding; what is under test is
the real workflow's handling of it, on Temporal's time-skipping test server so the retry
backoff does not slow the test down.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from services.trainer.orchestration.run_lifecycle import TRAINING_RETRY_POLICY
from services.trainer.orchestration.run_workflow import run_workflow_id
from services.trainer.registry import TRAINER_WORKFLOWS
from shared.converter import data_converter
from shared.errors import WORKER_SHUTDOWN
from shared.types import (
    FINE_TUNE_ACTIVITY,
    FINE_TUNING_WORKFLOW,
    BertExperimentOutput,
    BertFineTuneRequest,
    BertFineTuneResult,
)
from tests.helpers.binaries import temporal_test_server


async def test_more_preemptions_than_retry_attempts_still_finish() -> None:
    preemptions = (TRAINING_RETRY_POLICY.maximum_attempts or 1) + 2
    seen_attempts: list[int] = []

    @activity.defn(name=FINE_TUNE_ACTIVITY)
    async def preempted_then_done(request: BertFineTuneRequest) -> BertFineTuneResult:
        attempt = request.attempt_offset + activity.info().attempt
        seen_attempts.append(attempt)
        if len(seen_attempts) <= preemptions:
            raise ApplicationError("worker shutting down; checkpoint saved", type=WORKER_SHUTDOWN)
        return BertFineTuneResult(
            run_id=request.run_id,
            config=request.config,
            train_loss=0.1,
            eval_accuracy=None,
            training_time_seconds=1.0,
            num_parameters=1,
            model_dir="/runs/x",
            num_train_samples=1,
            train_samples_per_second=1.0,
            label_names=["a", "b"],
            resumed_from_step=10,
        )

    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter, test_server_existing_path=temporal_test_server()
    )
    async with env:
        queue = f"preempt-{uuid.uuid4()}"
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=TRAINER_WORKFLOWS,
            activities=[preempted_then_done],
        ):
            handle = await env.client.start_workflow(
                FINE_TUNING_WORKFLOW,
                {"experiment_name": "spot", "runs": [{"train_file": "t.csv"}]},
                id="replay-run-preempted",
                task_queue=queue,
                result_type=BertExperimentOutput,
            )
            output = await handle.result()
        # The re-executions (in the run's child workflow) replay deterministically; both
        # histories join the recorded ones.
        run_id = output.runs[0].run_id
        histories = {
            "replay-run-preempted": await handle.fetch_history(),
            "replay-run-preempted-child": await env.client.get_workflow_handle(
                run_workflow_id(handle.id, run_id)
            ).fetch_history(),
        }
        replayer = Replayer(workflows=TRAINER_WORKFLOWS, data_converter=data_converter)
        for name, history in histories.items():
            await replayer.replay_workflow(history)
            if os.environ.get("RECORD_HISTORIES"):
                folder = Path(__file__).parents[1] / "histories"
                (folder / f"{name}.json").write_text(history.to_json(), encoding="utf-8")
    assert output.runs[0].resumed_from_step == 10
    assert len(seen_attempts) == preemptions + 1
    # Attempt numbers keep increasing across re-executions (checkpoint folders stay ordered).
    assert seen_attempts == sorted(seen_attempts) and len(set(seen_attempts)) == len(seen_attempts)
