"""Workflow code stays deterministic: recorded histories replay without errors.

`tests/histories/*.json` were recorded from real executions (success and failure of both
workflows, a training cancelled mid-run with progress signals and the discard local
activity, and a run re-executed after repeated preemptions); replaying them catches a
change to workflow code that would break workflows already running in production. Fresh
histories are replayed too. To re-record after an
intentional, versioned change: `RECORD_HISTORIES=1 pytest tests/test_replay.py`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.worker import Replayer

from services.inferencer.workflows import BertInferenceWorkflow
from services.trainer.registry import TRAINER_WORKFLOWS
from shared.converter import data_converter
from shared.types import FINE_TUNING_WORKFLOW, INFERENCE_WORKFLOW
from tests.conftest import SentimentData, running_workers, tiny_config
from tests.durability.harness import long_config, long_run_csv, query_progress

HISTORIES = Path(__file__).parent / "histories"


def replayer() -> Replayer:
    return Replayer(
        workflows=[*TRAINER_WORKFLOWS, BertInferenceWorkflow], data_converter=data_converter
    )


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
    await replayer().replay_workflow(history)


async def test_fresh_histories_replay(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
) -> None:
    ids = [
        "replay-train",
        "replay-infer",
        "replay-infer-missing",
        "replay-train-bad-column",
        "replay-train-cancelled",
    ]
    async with running_workers(client, runs_root) as queues:
        output = await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            {"experiment_name": "replay", "runs": [tiny_config(tiny_model, sentiment_csv)]},
            id=ids[0],
            task_queue=queues.training,
        )
        await client.execute_workflow(
            INFERENCE_WORKFLOW,
            {"run_id": output["runs"][0]["run_id"], "texts": ["great fun", "so sad"]},
            id=ids[1],
            task_queue=queues.inference,
        )
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                INFERENCE_WORKFLOW,
                {"run_id": "no-such-run", "texts": ["x"]},
                id=ids[2],
                task_queue=queues.inference,
            )
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                FINE_TUNING_WORKFLOW,
                {
                    "experiment_name": "replay-bad",
                    "runs": [tiny_config(tiny_model, sentiment_csv, text_column="nope")],
                },
                id=ids[3],
                task_queue=queues.training,
            )
        # Cancelled mid-training: progress signals, activity cancellation, the discard
        # local activity, all in one history.
        train, validation = long_run_csv(tmp_path, rows=2000)
        cancelled = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            {
                "experiment_name": "replay-cancel",
                "runs": [long_config(tiny_model, train, validation, num_epochs=3)],
            },
            id=ids[4],
            task_queue=queues.training,
        )
        for _ in range(240):
            (run,) = (await query_progress(cancelled)).runs
            if run.phase == "training" and run.global_step > 0:
                break
            await asyncio.sleep(0.25)
        await cancelled.cancel()
        with pytest.raises(WorkflowFailureError):
            await cancelled.result()
    for workflow_id in ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        await replayer().replay_workflow(history)
        if os.environ.get("RECORD_HISTORIES"):
            HISTORIES.mkdir(exist_ok=True)
            (HISTORIES / f"{workflow_id}.json").write_text(history.to_json(), encoding="utf-8")
