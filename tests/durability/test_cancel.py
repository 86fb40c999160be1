"""Cancel an experiment mid-training: the loop stops, partial output goes, finished runs stay."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import activity as temporal_activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Worker

from services.trainer.orchestration.run_workflow import run_workflow_id
from services.trainer.registry import TRAINER_WORKFLOWS, orchestration_activities
from services.trainer.worker import build_trainer_worker
from shared import metrics
from shared.types import (
    FINE_TUNE_ACTIVITY,
    FINE_TUNING_WORKFLOW,
    BertExperimentInput,
    BertFineTuneRequest,
    BertFineTuneResult,
    ExperimentProgress,
)
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.durability.harness import (
    long_config,
    long_run_csv,
    query_progress,
    task_queue,
    wait_for,
)

HEARTBEAT_TIMEOUT_SECONDS = 5


def _training_threads() -> list[str]:
    """Threads that are inside the training code right now (not idle in the pool)."""
    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.endswith(
                ("services/trainer/training/fine_tune.py", "transformers/trainer.py")
            ):
                busy.append(thread.name)
                break
            frame = frame.f_back
    return busy


def _steps_taken() -> float:
    return metrics.STEPS._value.get()


async def test_cancel_stops_training_and_keeps_finished_sibling(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
    measure: Callable[..., None],
) -> None:
    train, validation = long_run_csv(tmp_path, rows=2000)
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "cancel",
            "runs": [
                tiny_config(tiny_model, sentiment_csv),  # 80 steps: finishes first
                long_config(tiny_model, train, validation),  # 2000 steps: cancelled
            ],
            "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS,
        }
    )
    finished_id, cancelled_id = experiment.run_ids()
    queue = task_queue()
    worker = build_trainer_worker(
        client,
        task_queue=queue,
        runs_root=runs_root,
        max_concurrent_activities=2,
        graceful_shutdown=timedelta(seconds=5),
        progress_signal_interval=timedelta(seconds=1),
        local_path_roots=TEST_LOCAL_PATH_ROOTS,
    )
    async with worker:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW, experiment, id=f"cancel-{uuid.uuid4()}", task_queue=queue
        )

        async def sibling_done_and_training() -> ExperimentProgress | None:
            progress = await query_progress(handle)
            finished, cancelled = progress.runs
            ready = (
                finished.state == "succeeded"
                and cancelled.phase == "training"
                and cancelled.global_step > 0
            )
            return progress if ready else None

        await wait_for(sibling_done_and_training, "run 0 done and run 1 training", 120)
        assert (runs_root / cancelled_id / "checkpoints").is_dir()  # partial output exists
        steps_at_cancel = _steps_taken()
        cancelled_at = time.monotonic()
        await handle.cancel()

        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=60)
        stopped_after = time.monotonic() - cancelled_at
        assert isinstance(failure.value.cause, CancelledError)
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED

        # The training loop has ended: no thread is in the training code, and no step is
        # taken after the workflow reported CANCELED.
        assert _training_threads() == []
        steps_after_stop = _steps_taken()
        await asyncio.sleep(1.0)
        assert _steps_taken() == steps_after_stop
        assert not [t.name for t in threading.enumerate() if t.name == "heartbeat"]

        progress = await query_progress(handle)
        assert [run.state for run in progress.runs] == ["succeeded", "cancelled"]
        # The finished run's result stays in the history: its child completed.
        completed = [
            event.child_workflow_execution_completed_event_attributes.workflow_execution
            async for event in handle.fetch_history_events()
            if event.HasField("child_workflow_execution_completed_event_attributes")
        ]
        assert [c.workflow_id for c in completed] == [run_workflow_id(handle.id, finished_id)]

    assert not (runs_root / cancelled_id).exists()
    assert (runs_root / finished_id / "run.json").is_file()
    measure(
        cancel_to_canceled_s=stopped_after,
        steps_after_cancel_request=int(steps_after_stop - steps_at_cancel),
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_SECONDS,
    )


async def test_cancel_between_attempts_discards_the_partial_run(
    client: Client, tiny_model: Path, runs_root: Path
) -> None:
    """Cancelled while waiting to retry: no attempt runs to clean up, the workflow does."""
    failed_once = asyncio.Event()

    # Stands in for an attempt that wrote checkpoints, then crashed: the real workflow
    # schedules a retry after its backoff, and the cancel lands during that wait.
    @temporal_activity.defn(name=FINE_TUNE_ACTIVITY)
    async def crashes_after_checkpointing(request: BertFineTuneRequest) -> BertFineTuneResult:
        checkpoint = runs_root / request.run_id / "checkpoints" / "attempt-1" / "checkpoint-5"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")
        failed_once.set()
        raise ApplicationError("simulated crash")  # retryable

    queue = f"cancel-backoff-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=TRAINER_WORKFLOWS,
        activities=[crashes_after_checkpointing, *orchestration_activities(runs_root)],
    ):
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            {"experiment_name": "backoff", "runs": [{"train_file": "unused.csv"}]},
            id=f"cancel-backoff-{uuid.uuid4()}",
            task_queue=queue,
        )
        await asyncio.wait_for(failed_once.wait(), timeout=30)
        run_dir = runs_root / "backoff-run-0-bert-base-uncased"
        assert run_dir.is_dir()
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert not run_dir.exists(), "the cancelled run's checkpoints were left behind"
