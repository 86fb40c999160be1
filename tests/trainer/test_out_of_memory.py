"""Out of device memory: the attempt retrains with smaller per-device batches, same effective batch.

A real trainer process whose model raises ``torch.OutOfMemoryError`` above a number of rows
per forward pass (``tests/seam_worker.py``), a real Temporal server and real training.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from shared.errors import RESOURCE_EXHAUSTED
from shared.runs import RUN_MANIFEST
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.conftest import SentimentData, tiny_config
from tests.durability.harness import predicts_sentiment, task_queue
from tests.helpers.processes import WorkerProcess

SEAM = Path(__file__).parents[1] / "seam_worker.py"


def _trainer(client: Client, runs_root: Path, log: Path, rows_that_fit: int) -> WorkerProcess:
    return WorkerProcess(
        client.service_client.config.target_host,
        task_queue(),
        runs_root,
        log,
        extra_env={"SIMULATED_DEVICE_ROWS": str(rows_that_fit)},
        entry_point=[str(SEAM)],
    )


def _experiment(name: str, config: dict) -> BertExperimentInput:
    return BertExperimentInput.model_validate(
        {"experiment_name": name, "runs": [config], "heartbeat_timeout_seconds": 30}
    )


async def test_out_of_memory_halves_the_batch_and_keeps_the_effective_batch(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
) -> None:
    worker = _trainer(client, runs_root, tmp_path / "trainer.log", rows_that_fit=4)
    try:
        config = tiny_config(tiny_model, sentiment_csv, batch_size=16, num_epochs=4)
        output = await asyncio.wait_for(
            client.execute_workflow(
                FINE_TUNING_WORKFLOW,
                _experiment("oom-fits", config),
                id=f"oom-fits-{uuid.uuid4()}",
                task_queue=worker.task_queue,
                result_type=BertExperimentOutput,
            ),
            timeout=300,
        )
        (run,) = output.runs
        # One attempt: the fallback happened inside it, not as a storm of retries.
        assert len(worker.events("training.attempt_started")) == 1
        reductions = [
            (e["per_device_batch"], e["retry_per_device_batch"], e["gradient_accumulation"])
            for e in worker.events("training.out_of_memory")
            if e["phase"] == "training"
        ]
        assert reductions == [(16, 8, 2), (8, 4, 4)]
        assert any(
            "per-device batch 4 with 4 gradient accumulation steps" in note for note in run.notes
        ), run.notes
        manifest = json.loads((Path(run.model_dir) / RUN_MANIFEST).read_text(encoding="utf-8"))
        # Same optimisation as batch 16: 160 rows / 16 per step * 4 epochs.
        assert manifest["global_step"] == 40
        assert run.eval_accuracy is not None and run.eval_accuracy > 0.8
        assert predicts_sentiment(run.model_dir) == ["positive", "negative"]
    finally:
        worker.stop()


async def test_a_run_that_does_not_fit_even_one_row_fails_once_with_resource_exhausted(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
) -> None:
    worker = _trainer(client, runs_root, tmp_path / "trainer.log", rows_that_fit=0)
    try:
        config = tiny_config(tiny_model, sentiment_csv, batch_size=8)
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(
                client.execute_workflow(
                    FINE_TUNING_WORKFLOW,
                    _experiment("oom-never", config),
                    id=f"oom-never-{uuid.uuid4()}",
                    task_queue=worker.task_queue,
                    result_type=BertExperimentOutput,
                ),
                timeout=180,
            )
        error = failed.value.cause
        assert isinstance(error, ApplicationError) and error.type == RESOURCE_EXHAUSTED, error
        assert error.non_retryable
        assert "batch_size 8" in error.message and "even one row at a time" in error.message
        assert len(worker.events("training.attempt_started")) == 1, "the failure was retried"
        runs = [p.name for p in runs_root.iterdir() if not p.name.startswith(".")]
        assert runs == [], "left a partial run directory"
    finally:
        worker.stop()
