"""A run whose loss or metrics are not finite fails with ``TrainingDiverged``, through a real
server and trainer: at once (no retry), committing nothing, and a sweep trial paused at a
rung reports no NaN to its sweep.

The model's embeddings are NaN (``artefacts.nan_model``), so the loss is NaN from the first
step, as after a learning rate far too high, only deterministic.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from shared.errors import TRAINING_DIVERGED
from shared.sweep_types import SWEEP_WORKFLOW
from shared.types import FINE_TUNING_WORKFLOW, make_run_id
from tests.conftest import SentimentData, running_workers, tiny_config
from tests.hardening.artefacts import Artefacts
from tests.hardening.support import first_application_error


@dataclass(frozen=True)
class DivergeEnv:
    client: Client
    queue: str
    runs_root: Path
    config: dict[str, Any]


@pytest_asyncio.fixture(scope="module")
async def diverge_env(
    temporal_env: WorkflowEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    artefacts: Artefacts,
) -> AsyncIterator[DivergeEnv]:
    runs_root = tmp_path_factory.mktemp("diverged") / "bert_runs"
    runs_root.mkdir()
    roots = (artefacts.root, sentiment_csv.train.parent, tiny_model, runs_root)
    config = tiny_config(tiny_model, sentiment_csv, model_name=str(artefacts.nan_model))
    async with running_workers(
        temporal_env.client, runs_root, inferencer=False, local_path_roots=roots
    ) as queues:
        yield DivergeEnv(temporal_env.client, queues.training, runs_root, config)


async def _failure(env: DivergeEnv, workflow: str, value: dict[str, Any], workflow_id: str) -> Any:
    handle = await env.client.start_workflow(workflow, value, id=workflow_id, task_queue=env.queue)
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), timeout=180)
    error = first_application_error(failed.value)
    assert isinstance(error, ApplicationError), failed.value
    return error


def _run_folders(runs_root: Path) -> list[Path]:
    return [p for p in runs_root.iterdir() if not p.name.startswith((".", "_"))]


async def _fine_tune_attempts(client: Client, run_workflow_id: str) -> list[int]:
    history = await client.get_workflow_handle(run_workflow_id).fetch_history()
    return [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]


async def test_a_diverged_run_fails_typed_at_once_and_commits_nothing(
    diverge_env: DivergeEnv,
) -> None:
    workflow_id = f"diverged-{uuid.uuid4()}"
    config = {**diverge_env.config, "num_epochs": 1}
    error = await _failure(
        diverge_env,
        FINE_TUNING_WORKFLOW,
        {"experiment_name": "diverged", "runs": [config]},
        workflow_id,
    )
    assert error.type == TRAINING_DIVERGED and error.non_retryable, error
    assert "the training diverged: train_loss is nan" in error.message
    assert "eval_loss is nan" in error.message and "nothing was saved" in error.message
    assert "learning_rate" in error.message
    run_id = make_run_id("diverged", 0, config["model_name"])
    assert await _fine_tune_attempts(diverge_env.client, f"{workflow_id}/{run_id}") == [1]
    # Nothing committed, no record with null (NaN) in it, no partial folder left behind.
    assert list(diverge_env.runs_root.rglob("run.json")) == []
    assert _run_folders(diverge_env.runs_root) == []


async def test_a_sweep_trial_diverging_at_a_rung_fails_instead_of_reporting_nan(
    diverge_env: DivergeEnv,
) -> None:
    """Successive halving pauses the trial at epoch 1 (a rung): the paused result would
    carry NaN metrics to the sweep's rung decision; the trial fails instead."""
    sweep = {
        "sweep_name": "diverged-sweep",
        "base": {**diverge_env.config, "num_epochs": 2},
        "space": {"learning_rate": {"values": [0.005]}},
        "strategy": "grid",
        "early_stopping": {"type": "successive_halving", "min_epochs": 1},
    }
    error = await _failure(diverge_env, SWEEP_WORKFLOW, sweep, f"diverged-sweep-{uuid.uuid4()}")
    assert error.type == TRAINING_DIVERGED and error.non_retryable, error
    assert "train_loss is nan" in error.message
    (trials,) = error.details
    assert [trial["state"] for trial in trials] == ["failed"]
    assert all(math.isfinite(value) for trial in trials for value in trial["eval_metrics"].values())
    assert list(diverge_env.runs_root.rglob("run.json")) == []
    assert _run_folders(diverge_env.runs_root) == []
