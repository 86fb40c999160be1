"""Probes of a running training activity, and the data and configs durability tests train.

Worker processes come from ``tests.helpers.processes.WorkerProcess``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from shared.types import PROGRESS_QUERY, ExperimentProgress, TrainingProgress
from tests.tiny import sentiment_rows, write_csv

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]


def long_run_csv(root: Path, rows: int = 1000) -> tuple[Path, Path]:
    """1000 rows: 250 steps per epoch at batch size 4, 1000 steps in 4 epochs."""
    return (
        write_csv(root / "long-train.csv", sentiment_rows(rows, seed=3, string_labels=True)),
        write_csv(root / "long-validation.csv", sentiment_rows(40, seed=4, string_labels=True)),
    )


def long_config(model: Path, train: Path, validation: Path, **overrides: object) -> dict:
    config = {
        "model_name": str(model),
        "train_file": str(train),
        "validation_file": str(validation),
        "num_epochs": 4,
        "batch_size": 4,
        "learning_rate": 0.005,
        "max_seq_length": 16,
        "use_gpu": False,
        "checkpoint_steps": 50,
        # Every synthetic text has the same length, so grouping could only change the order of
        # the rows: these tests' step counts were calibrated on the seeded random order (with
        # the sampler's own order the tiny model at this learning rate can sit at chance for
        # hundreds of steps). Length grouping has its own tests (test_group_by_length.py).
        "group_by_length": False,
    }
    config.update(overrides)
    return config


def task_queue() -> str:
    return f"durability-{uuid.uuid4()}"


async def heartbeat(client: Client, handle: WorkflowHandle) -> TrainingProgress | None:
    """The last heartbeat the server holds for the (single) pending training activity,
    in the workflow or, for a run trained in a child workflow, in its (single) child."""
    description = await handle.describe()
    children = description.raw_description.pending_children
    if children:
        child = client.get_workflow_handle(children[0].workflow_id)
        description = await child.describe()
    pending = description.raw_description.pending_activities
    if not pending or not pending[0].heartbeat_details.payloads:
        return None
    (details,) = await client.data_converter.decode(
        pending[0].heartbeat_details.payloads, [TrainingProgress]
    )
    return details


async def query_progress(handle: WorkflowHandle) -> ExperimentProgress:
    return await handle.query(PROGRESS_QUERY, result_type=ExperimentProgress)


async def sealed_checkpoint(handle: WorkflowHandle) -> str | None:
    """The checkpoint the (single) run last reported through the progress query."""
    (run,) = (await query_progress(handle)).runs
    return run.latest_checkpoint


# A query the server gave up on: no worker answered it in time (a worker process still
# starting, or a busy one on a loaded machine). For a probe that means "not yet".
_UNANSWERED = (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED)


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 60, every: float = 0.2
) -> T:
    deadline = time.monotonic() + timeout
    unanswered: RPCError | None = None
    while time.monotonic() < deadline:
        try:
            value = await probe()
        except RPCError as err:
            if err.status not in _UNANSWERED:
                raise
            unanswered, value = err, None
        if value:
            return value
        await asyncio.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from unanswered


def predicts_sentiment(model_dir: str) -> list[str]:
    """Load the saved run like a user would and classify two unambiguous texts."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tokenizer(
        ["the film was great and fun", "the movie was awful"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        labels = model(**batch).logits.argmax(-1).tolist()
    return [model.config.id2label[label] for label in labels]
