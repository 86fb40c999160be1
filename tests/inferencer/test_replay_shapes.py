"""Every inference call shape replays; histories from before each change still do.

``tests/histories/replay-infer*.json`` are replayed by ``tests/test_replay.py``: the older
ones hold a regular activity for a two-text request (recorded before small requests became
local activities), ``replay-infer-small.json`` the local activity that loaded its model
inside the workflow task (before ``WARM_LOCAL_ACTIVITY``), ``replay-infer-cold.json`` a cold
model's request (the warm-only local activity declines with ``ModelCold``, the regular
activity serves it) and ``replay-infer-warm.json`` the next request (the local activity
serves it). To record missing ones: ``RECORD_HISTORIES=1 pytest
tests/inferencer/test_replay_shapes.py`` (recorded files are never overwritten).
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Replayer

from services.inferencer.workflows import SMALL_REQUEST_MAX_TEXTS, BertInferenceWorkflow
from shared.converter import data_converter
from shared.types import INFERENCE_WORKFLOW
from tests.conftest import running_workers
from tests.hardening.conftest import TrainedRun, copy_run

HISTORIES = Path(__file__).parents[1] / "histories"
# Recorded by this test (in this order: the first request finds the model cold).
RECORDED = ("replay-infer-cold", "replay-infer-warm")


async def test_small_and_large_request_histories_replay(
    client: Client, trained_run: TrainedRun, runs_root: Path
) -> None:
    copy_run(trained_run.run_dir, runs_root, "replay-shapes")
    shapes = {
        "replay-infer-cold": ["great fun", "so sad"],
        "replay-infer-warm": ["great fun", "so sad"],
        "replay-infer-large": ["great fun", "so sad"] * SMALL_REQUEST_MAX_TEXTS,
    }
    async with running_workers(client, runs_root, trainer=False) as queues:
        for workflow_id, texts in shapes.items():
            await client.execute_workflow(
                INFERENCE_WORKFLOW,
                {"run_id": "replay-shapes", "texts": texts},
                id=workflow_id,
                task_queue=queues.inference,
            )

    replayer = Replayer(workflows=[BertInferenceWorkflow], data_converter=data_converter)
    histories = {}
    for workflow_id in shapes:
        histories[workflow_id] = await client.get_workflow_handle(workflow_id).fetch_history()
        await replayer.replay_workflow(histories[workflow_id])
    scheduled = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    assert scheduled in {e.event_type for e in histories["replay-infer-cold"].events}
    assert scheduled not in {e.event_type for e in histories["replay-infer-warm"].events}
    if os.environ.get("RECORD_HISTORIES"):
        for workflow_id in RECORDED:
            path = HISTORIES / f"{workflow_id}.json"
            if not path.exists():
                path.write_text(histories[workflow_id].to_json(), encoding="utf-8")
