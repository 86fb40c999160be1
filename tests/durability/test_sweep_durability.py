"""Sweeps under failure: a trainer process killed mid-sweep loses no trial; a cancelled
sweep stops its running trials, removes their partial runs and promotes nothing.

Real trainer processes (``bert-finetune worker trainer``) or in-process workers, a real
Temporal server, the tiny BERT, real files.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError

from services.trainer.orchestration.run_workflow import run_workflow_id
from shared.runs import is_complete
from shared.sweep_types import SWEEP_WORKFLOW, BertSweepOutput, SweepProgress
from shared.types import PROGRESS_QUERY, BertFineTuneResult
from tests.conftest import running_workers
from tests.durability.harness import long_config, long_run_csv, task_queue, wait_for
from tests.helpers.processes import WorkerProcess

SEAM_WORKER = Path(__file__).parents[1] / "seam_worker.py"

HEARTBEAT_TIMEOUT_SECONDS = 5


async def _progress(handle: object) -> SweepProgress:
    return await handle.query(PROGRESS_QUERY, result_type=SweepProgress)  # type: ignore[attr-defined]


def _sweep(name: str, config: dict, learning_rates: list[float], **fields: object) -> dict:
    return {
        "sweep_name": name,
        "base": config,
        "space": {"learning_rate": {"values": learning_rates}},
        "strategy": "grid",
        "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS,
        **fields,
    }


async def _activity_events(client: Client, workflow_id: str) -> list[str]:
    names = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
        ):
            names.append(EventType.Name(event.event_type))
    return names


async def test_sigkill_of_a_trainer_mid_sweep_loses_no_trial(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path, rows=400)  # 100 steps per epoch
    config = long_config(tiny_model, train, validation, num_epochs=1, checkpoint_steps=20)
    # The first worker holds trial 1 at step 30 (past its checkpoint at step 20) until it is
    # killed: the kill lands mid-training however fast the machine trains.
    held = tmp_path / "trial-1-held"
    first = WorkerProcess(
        address,
        queue,
        runs_root,
        tmp_path / "worker-1.log",
        entry_point=[str(SEAM_WORKER)],
        extra_env={"HOLD_TRAINING": f"kill-sweep-run-1-:30:{held}"},
    )
    second: WorkerProcess | None = None
    try:
        handle = await client.start_workflow(
            SWEEP_WORKFLOW,
            _sweep("kill-sweep", config, [0.005, 0.004, 0.003], max_concurrent_trials=1),
            id=f"kill-sweep-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertSweepOutput,
        )

        async def second_trial_held_past_a_checkpoint() -> bool:
            return held.exists()

        await wait_for(second_trial_held_past_a_checkpoint, "trial 1 held at step 30", 180)
        first.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert await first.wait(10) == -signal.SIGKILL
        second = WorkerProcess(address, queue, runs_root, tmp_path / "worker-2.log")
        output = await asyncio.wait_for(handle.result(), timeout=300)
        recovered_s = time.monotonic() - killed_at
    finally:
        first.stop()
        if second:
            second.stop()

    assert [t.state for t in output.trials] == ["succeeded"] * 3
    for trial in output.trials:
        assert is_complete(runs_root / trial.run_id)
        assert not (runs_root / trial.run_id / "checkpoints").exists()
    children = [run_workflow_id(handle.id, t.run_id) for t in output.trials]
    killed = await client.get_workflow_handle(children[1], result_type=BertFineTuneResult).result()
    # The killed trial resumed from a checkpoint; the one finished before the kill was never
    # trained again, and the one not started yet trained once, on the new worker.
    assert killed.resumed_from_step is not None and killed.resumed_from_step >= 20
    assert await _activity_events(client, children[0]) == ["EVENT_TYPE_ACTIVITY_TASK_COMPLETED"]
    assert await _activity_events(client, children[2]) == ["EVENT_TYPE_ACTIVITY_TASK_COMPLETED"]
    assert output.best_run_id in {t.run_id for t in output.trials}
    measure(resumed_from_step=killed.resumed_from_step, kill_to_sweep_done_s=recovered_s)


async def test_cancel_mid_sweep_cancels_trials_and_removes_partial_runs(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    train, validation = long_run_csv(tmp_path, rows=2000)  # 500 steps per epoch
    config = long_config(tiny_model, train, validation, num_epochs=2)
    async with running_workers(client, runs_root, inferencer=False) as queues:
        handle = await client.start_workflow(
            SWEEP_WORKFLOW,
            _sweep(
                "cancel-sweep",
                config,
                [0.005, 0.004, 0.003],
                max_concurrent_trials=2,
                promote_alias="never",
            ),
            id=f"cancel-sweep-{uuid.uuid4()}",
            task_queue=queues.training,
            result_type=BertSweepOutput,
        )

        async def training() -> bool:
            trials = (await _progress(handle)).trials
            return any(t.phase == "training" and t.global_step > 0 for t in trials)

        await wait_for(training, "a trial training", 120)
        cancelled_at = time.monotonic()
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=60)
        cancel_s = time.monotonic() - cancelled_at
        progress = await _progress(handle)
    assert isinstance(failure.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    states = [t.state for t in progress.trials]
    assert states[:2] == ["cancelled", "cancelled"], states
    assert "running" not in states and "succeeded" not in states
    for trial in progress.trials:
        child = client.get_workflow_handle(run_workflow_id(handle.id, trial.run_id))
        assert (await child.describe()).status == WorkflowExecutionStatus.CANCELED
    # Hidden folders are the runs root's own bookkeeping (.fences), never runs.
    left = [p.name for p in runs_root.iterdir() if not p.name.startswith(".")]
    assert left == [], "partial runs or an alias were left"
    # Within one heartbeat interval, plus the discard and the slow shared machine.
    assert cancel_s < 30
    measure(cancel_to_sweep_cancelled_s=cancel_s)
