"""Hangs outside training steps, and cancelling an evaluation, with real worker processes.

The hung or slow phase comes from ``tests/seam_worker.py`` (a library call that never
returns, or a slow evaluation batch); the workers are the production CLI processes.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.conftest import SentimentData, tiny_config
from tests.durability.harness import predicts_sentiment, query_progress, task_queue, wait_for
from tests.helpers.processes import WorkerProcess
from tests.tiny import sentiment_rows, write_csv

SEAM = Path(__file__).parents[1] / "seam_worker.py"
PHASE_LIMIT_SECONDS = 10
HEARTBEAT_TIMEOUT_SECONDS = 5


def _experiment(name: str, config: dict) -> BertExperimentInput:
    return BertExperimentInput.model_validate(
        {
            "experiment_name": name,
            "runs": [config],
            "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS,
        }
    )


def _liveness(worker: WorkerProcess) -> tuple[int, str]:
    url = f"http://127.0.0.1:{worker.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 (loopback)
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.parametrize("phase", ["loading_data", "evaluating"])
async def test_a_hung_phase_is_handed_to_another_worker_and_fails_liveness(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
    phase: str,
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    hung = WorkerProcess(
        address,
        queue,
        runs_root,
        tmp_path / "hung.log",
        extra_env={
            "HANG_IN": phase,
            "BERT_PHASE_TIMEOUTS_SECONDS": f"{phase}={PHASE_LIMIT_SECONDS}",
        },
        entry_point=[str(SEAM)],
    )
    healthy: WorkerProcess | None = None
    try:
        config = tiny_config(tiny_model, sentiment_csv)
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            _experiment(f"hang-{phase.replace('_', '-')}", config),
            id=f"hang-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )
        stalled = await wait_for(
            lambda: _first(hung, "training.stalled"), f"the {phase} watchdog", 120
        )
        assert stalled["phase"] == phase
        assert stalled["stuck_seconds"] >= PHASE_LIMIT_SECONDS
        status, reason = _liveness(hung)
        assert status == 503 and phase in reason
        # Heartbeats stopped, so Temporal retries the run; another worker finishes it.
        healthy = WorkerProcess(address, queue, runs_root, tmp_path / "healthy.log")
        output = await asyncio.wait_for(handle.result(), timeout=180)
        (run,) = output.runs
        assert healthy.events("training.attempt_started")[0]["attempt"] == 2
        assert predicts_sentiment(run.model_dir) == ["positive", "negative"]
    finally:
        hung.stop()
        if healthy:
            healthy.stop()


async def test_cancel_during_a_long_evaluation_stops_it_within_seconds(
    client: Client, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path, tmp_path: Path
) -> None:
    slow_batch_seconds = 2.0
    validation = write_csv(
        tmp_path / "validation.csv", sentiment_rows(640, seed=5, string_labels=True)
    )
    # 640 rows at 32 per batch: 20 batches, 40 s of evaluation.
    worker = WorkerProcess(
        client.service_client.config.target_host,
        task_queue(),
        runs_root,
        tmp_path / "trainer.log",
        extra_env={"SLOW_EVAL_BATCH_SECONDS": str(slow_batch_seconds)},
        entry_point=[str(SEAM)],
    )
    try:
        config = tiny_config(
            tiny_model, sentiment_csv, num_epochs=1, validation_file=str(validation)
        )
        experiment = _experiment("cancel-eval", config)
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id=f"cancel-eval-{uuid.uuid4()}",
            task_queue=worker.task_queue,
            result_type=BertExperimentOutput,
        )

        async def evaluating() -> bool:
            progress = await query_progress(handle)
            return bool(progress.runs and progress.runs[0].phase == "evaluating")

        await wait_for(evaluating, "the evaluation to start", 120)
        await asyncio.sleep(slow_batch_seconds)  # well inside the evaluation
        requested = time.monotonic()
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=60)
        latency = time.monotonic() - requested
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
        # Bounded by the heartbeat throttle, the heartbeat interval and one batch, not by
        # the 40 s the evaluation would have taken.
        assert latency < 5 + 2 + 2 * slow_batch_seconds + 3, f"cancelled after {latency:.1f}s"
        assert not worker.events("training.evaluated")
        assert not (runs_root / experiment.run_ids()[0]).exists(), "partial run left behind"
    finally:
        worker.stop()


async def _first(worker: WorkerProcess, event: str) -> dict | None:
    events = worker.events(event)
    return events[0] if events else None
