"""The ``progress`` query while a run trains: live, monotonic, a sane ETA, from the CLI too."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError

from services.trainer.worker import build_trainer_worker
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, RunProgress
from tests.conftest import run_temporal_cli
from tests.durability.harness import long_config, long_run_csv, query_progress, task_queue


async def test_progress_query_is_live_monotonic_and_has_an_eta(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    train, validation = long_run_csv(tmp_path, rows=4000)  # 4000 steps: time to watch it
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "progress",
            "runs": [long_config(tiny_model, train, validation, checkpoint_steps=500)],
            "heartbeat_timeout_seconds": 10,
        }
    )
    queue = task_queue()
    worker = build_trainer_worker(
        client,
        task_queue=queue,
        runs_root=runs_root,
        graceful_shutdown=timedelta(seconds=5),
        progress_signal_interval=timedelta(seconds=1),
    )
    async with worker:
        workflow_id = f"progress-{uuid.uuid4()}"
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW, experiment, id=workflow_id, task_queue=queue
        )
        samples: list[tuple[float, RunProgress]] = []
        latencies: list[float] = []
        deadline = time.monotonic() + 120
        while len({run.global_step for _, run in samples}) < 5:
            assert time.monotonic() < deadline, f"too few progress updates: {samples}"
            asked = time.monotonic()
            (run,) = (await query_progress(handle)).runs
            latencies.append(time.monotonic() - asked)
            if run.state == "running" and run.phase == "training" and run.global_step > 0:
                samples.append((asked, run))
            await asyncio.sleep(0.5)

        address = client.service_client.config.target_host
        from_cli = await run_temporal_cli(
            address, "workflow", "query", "--workflow-id", workflow_id, "--name", "progress"
        )
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=60)
        events = [event async for event in handle.fetch_history_events()]
        signals = sum(e.HasField("workflow_execution_signaled_event_attributes") for e in events)

    steps = [run.global_step for _, run in samples]
    assert steps == sorted(steps), f"progress went backwards: {steps}"
    first_at, first = samples[0]
    last_at, last = samples[-1]
    assert last.max_steps == 4000 and last.attempt == 1
    assert last.epoch > 0 and last.loss is not None
    # The ETA agrees (within a factor of three) with the rate the queries themselves observed.
    observed_rate = (last.global_step - first.global_step) / (last_at - first_at)
    expected_eta = (last.max_steps - last.global_step) / observed_rate
    assert last.eta_seconds is not None
    assert expected_eta / 3 <= last.eta_seconds <= expected_eta * 3
    assert max(latencies) < 1.0, f"a query took {max(latencies):.2f}s"

    (cli_run,) = from_cli["queryResult"][0]["runs"]
    assert cli_run["run_id"] == last.run_id
    assert cli_run["state"] == "running"
    assert cli_run["global_step"] >= last.global_step
    measure(
        progress_samples=len(samples),
        max_query_latency_s=max(latencies),
        eta_s=last.eta_seconds,
        eta_from_observed_rate_s=expected_eta,
        progress_signals=signals,
        history_events=len(events),
    )


async def test_progress_signals_stop_growing_history_past_the_budget(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path
) -> None:
    """Past the history budget only phase and checkpoint changes are signalled."""
    train, validation = long_run_csv(tmp_path, rows=4000)  # 1000 steps per epoch
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "budget",
            "runs": [
                long_config(tiny_model, train, validation, num_epochs=3, checkpoint_steps=1000)
            ],
        }
    )
    queue = task_queue()
    async with build_trainer_worker(
        client,
        task_queue=queue,
        runs_root=runs_root,
        progress_signal_interval=timedelta(seconds=0.2),
        progress_history_budget=20,
        progress_history_check_every=2,
    ):
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW, experiment, id=f"budget-{uuid.uuid4()}", task_queue=queue
        )
        await asyncio.wait_for(handle.result(), timeout=180)
        (run,) = (await query_progress(handle)).runs
    assert run.state == "succeeded"
    milestones = []
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_execution_signaled_event_attributes"):
            payload = event.workflow_execution_signaled_event_attributes.input.payloads[0]
            progress = json.loads(payload.data)
            milestones.append((progress["phase"], progress["latest_checkpoint"]))
    # Periodic signals repeat the previous phase and checkpoint. Without the guard a run of
    # several seconds sends one every 2 s; with it they stop once the budget is seen.
    periodic = sum(a == b for a, b in zip(milestones, milestones[1:], strict=False))
    assert periodic <= 3, f"{periodic} periodic signals despite the history budget: {milestones}"
