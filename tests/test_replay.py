"""Workflow code stays deterministic: recorded histories replay without errors.

`tests/histories/*.json` were recorded from real executions (success and failure of both
workflows, promotions, a training cancelled mid-run with progress signals and the discard local
activity, and a run re-executed after repeated preemptions); replaying them catches a
change to workflow code that would break workflows already running in production.
`replay-train*.json` predate runs as child workflows (they replay the inline path);
`replay-children-*` are experiments whose runs are ``BertRunWorkflow`` children (the
parent's and the child's history each; in `replay-children-export*` the run starts its
ONNX export, whose ``BertExportWorkflow`` history is `-onnx`), `replay-sweep-*` sweeps
with pruning, `replay-promote-rollout` a gated canary promotion (plan, gate on the inference
queue, update; recorded by tests/test_rollouts.py). Fresh histories are replayed too. To
record new ones after an intentional, versioned change:
`RECORD_HISTORIES=1 pytest tests/test_replay.py` (never overwrite a recorded file: old
histories are what running workflows look like).
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
from shared.export_types import export_workflow_id
from shared.types import FINE_TUNING_WORKFLOW, INFERENCE_WORKFLOW
from tests.conftest import SentimentData, running_workers, tiny_config
from tests.durability.harness import long_config, long_run_csv, query_progress
from tests.helpers.exports import wait_for_export

HISTORIES = Path(__file__).parent / "histories"


def replayer() -> Replayer:
    return Replayer(
        workflows=[*TRAINER_WORKFLOWS, BertInferenceWorkflow], data_converter=data_converter
    )


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    # The file name is the recorded workflow id (child workflow ids derive from it).
    history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
    await asyncio.wait_for(replayer().replay_workflow(history), timeout=60)


async def test_fresh_histories_replay(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
) -> None:
    ids = [
        # (Recorded before the export workflow: replay-children-train; its run's child
        # started no export.)
        "replay-children-export",
        "replay-infer",
        "replay-infer-missing",
        "replay-children-bad-column",
        "replay-children-cancelled",
    ]
    async with running_workers(client, runs_root) as queues:
        output = await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            {"experiment_name": "replay", "runs": [tiny_config(tiny_model, sentiment_csv)]},
            id=ids[0],
            task_queue=queues.training,
        )
        # The run started its ONNX export as it committed: that workflow replays too.
        await wait_for_export(client, output["runs"][0]["run_id"])
        export_history = await client.get_workflow_handle(
            export_workflow_id(output["runs"][0]["run_id"])
        ).fetch_history()
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
    histories = {f"{ids[0]}-onnx": export_history}
    for workflow_id in ids:
        handle = client.get_workflow_handle(workflow_id)
        histories[workflow_id] = await handle.fetch_history()
        description = await handle.describe()
        if description.workflow_type == FINE_TUNING_WORKFLOW:
            # The run's child: "{workflow id}/{run id}", the only child of these experiments.
            async for event in handle.fetch_history_events():
                started = event.child_workflow_execution_started_event_attributes
                if started.workflow_execution.workflow_id:
                    child = client.get_workflow_handle(started.workflow_execution.workflow_id)
                    histories[f"{workflow_id}-run"] = await child.fetch_history()
    for name, history in histories.items():
        await replayer().replay_workflow(history)
        path = HISTORIES / f"{name}.json"
        if os.environ.get("RECORD_HISTORIES") and not path.exists():
            path.write_text(history.to_json(), encoding="utf-8")
