"""A trainer worker process dies or is preempted mid-run; a new one finishes the run.

Real processes (``bert-finetune worker trainer``), a real Temporal server, real Trainer and
real files. Each test measures how much work the failure cost and reports it (the numbers in
docs/durability.md come from here: see the "durability measurements" summary).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from temporalio.client import Client

from services.trainer.run_folder import checkpoints
from shared.types import (
    FINE_TUNING_WORKFLOW,
    BertExperimentInput,
    BertExperimentOutput,
)
from tests.durability.harness import (
    heartbeat,
    long_config,
    long_run_csv,
    predicts_sentiment,
    sealed_checkpoint,
    task_queue,
    wait_for,
)
from tests.helpers.processes import WorkerProcess

HEARTBEAT_TIMEOUT_SECONDS = 5
MAX_STEPS = 1000  # 1000 rows / batch 4 * 4 epochs


def _step(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.split("-")[1])


def _at(event: dict) -> float:
    """A worker log line's wall-clock time."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def _experiment(name: str, config: dict) -> BertExperimentInput:
    return BertExperimentInput.model_validate(
        {
            "experiment_name": name,
            "runs": [config],
            "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS,
        }
    )


async def test_sigkill_resumes_from_last_checkpoint(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path)
    checkpoint_steps = 50
    config = long_config(tiny_model, train, validation, checkpoint_steps=checkpoint_steps)
    first = WorkerProcess(address, queue, runs_root, tmp_path / "worker-1.log")
    second: WorkerProcess | None = None
    try:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            _experiment("kill9", config),
            id=f"kill9-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )
        first_checkpoint = await wait_for(
            lambda: sealed_checkpoint(handle), "the first sealed checkpoint", 120
        )
        beat = await heartbeat(client, handle)  # what the server will hand the retry
        steps_at_kill = first.steps_counter()
        first.signal(signal.SIGKILL)
        killed_at = time.time()
        assert await first.wait(10) == -signal.SIGKILL
        second = WorkerProcess(address, queue, runs_root, tmp_path / "worker-2.log")

        output = await asyncio.wait_for(handle.result(), timeout=180)
        (run,) = output.runs
        resumed_at = second.events("training.resume")[0]

        # Resumed from a checkpoint at least as new as the one the heartbeat named...
        assert run.resumed_from_step is not None and run.resumed_from_step > 0
        assert run.resumed_from_step >= _step(first_checkpoint)
        assert resumed_at["step"] == run.resumed_from_step
        # ...losing at most one checkpoint interval of the work done before the kill...
        lost = max(0, int(steps_at_kill) - run.resumed_from_step)
        assert lost <= checkpoint_steps
        # ...and the new worker trained exactly the remaining steps, not the whole run again.
        assert second.steps_counter() == MAX_STEPS - run.resumed_from_step
        assert second.events("training.finished")[0]["global_step"] == MAX_STEPS

        run_dir = Path(run.model_dir)
        assert (run_dir / "run.json").is_file()
        assert not (run_dir / "checkpoints").exists()
        assert predicts_sentiment(run.model_dir) == ["positive", "negative"]
        retry_started = second.events("training.attempt_started")[0]
        measure(
            checkpoint_steps=checkpoint_steps,
            steps_at_kill=int(steps_at_kill),
            resumed_from_step=run.resumed_from_step,
            steps_lost=lost,
            heartbeat_named_checkpoint=bool(beat and beat.latest_checkpoint),
            kill_to_retry_started_s=_at(retry_started) - killed_at,
            kill_to_training_resumed_s=_at(resumed_at) - killed_at,
        )
    finally:
        first.stop()
        if second:
            second.stop()


async def test_sigterm_seals_checkpoint_and_retry_resumes_from_it(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path)
    # No periodic checkpoint before the SIGTERM: the only one is the one sealed at shutdown.
    config = long_config(tiny_model, train, validation, checkpoint_steps=MAX_STEPS)
    first = WorkerProcess(address, queue, runs_root, tmp_path / "worker-1.log", grace_s=20)
    second: WorkerProcess | None = None
    try:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            _experiment("sigterm", config),
            id=f"sigterm-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )

        async def training() -> float:
            try:
                return first.steps_counter()
            except OSError:  # the worker is still starting: no metrics endpoint yet
                return 0.0

        await wait_for(training, "training to start", 120)
        steps_at_sigterm = first.steps_counter()
        first.signal(signal.SIGTERM)
        sent, sent_at = time.monotonic(), time.time()
        assert await first.wait(30) == 0
        exit_seconds = time.monotonic() - sent
        second = WorkerProcess(address, queue, runs_root, tmp_path / "worker-2.log")

        output = await asyncio.wait_for(handle.result(), timeout=180)
        (run,) = output.runs
        (sealed,) = first.events("training.checkpoint")
        assert first.events("training.interrupted")
        # The checkpoint was sealed at shutdown, after every step trained before SIGTERM...
        assert sealed["step"] >= steps_at_sigterm > 0
        # ...and the retry resumed from exactly it: no work lost.
        assert run.resumed_from_step == sealed["step"]
        assert second.steps_counter() == MAX_STEPS - sealed["step"]
        assert predicts_sentiment(run.model_dir) == ["positive", "negative"]
        measure(
            steps_at_sigterm=int(steps_at_sigterm),
            sealed_step=sealed["step"],
            resumed_from_step=run.resumed_from_step,
            steps_lost=0,
            sigterm_to_exit_s=exit_seconds,
            sigterm_to_training_resumed_s=_at(second.events("training.resume")[0]) - sent_at,
        )
    finally:
        first.stop()
        if second:
            second.stop()


async def test_corrupt_newest_checkpoint_falls_back_to_previous(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path)
    config = long_config(tiny_model, train, validation, checkpoint_steps=50)
    first = WorkerProcess(address, queue, runs_root, tmp_path / "worker-1.log")
    second: WorkerProcess | None = None
    try:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            _experiment("corrupt", config),
            id=f"corrupt-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )
        run_id = _experiment("corrupt", config).run_ids()[0]
        run_dir = runs_root / run_id

        async def two_checkpoints() -> list[Path] | None:
            sealed = checkpoints.sealed_checkpoints(run_dir)
            return sealed if len(sealed) >= 2 else None

        await wait_for(two_checkpoints, "two sealed checkpoints", 120)
        first.signal(signal.SIGKILL)
        await first.wait(10)

        newest, previous = checkpoints.sealed_checkpoints(run_dir)[:2]
        weights = newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

        second = WorkerProcess(address, queue, runs_root, tmp_path / "worker-2.log")
        output = await asyncio.wait_for(handle.result(), timeout=180)
        (run,) = output.runs
        assert run.resumed_from_step == _step(previous)
        assert second.events("checkpoint.corrupt")[0]["checkpoint"] == str(newest)
        assert second.steps_counter() == MAX_STEPS - run.resumed_from_step
        measure(newest_step=_step(newest), resumed_from_step=run.resumed_from_step)
    finally:
        first.stop()
        if second:
            second.stop()
