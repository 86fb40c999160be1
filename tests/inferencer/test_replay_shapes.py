"""Both inference call shapes replay; histories from before the small-request path still do.

``tests/histories/replay-infer*.json`` are replayed by ``tests/test_replay.py``: the older
ones hold a regular activity for a two-text request (recorded before small requests became
local activities), ``replay-infer-small.json`` the local-activity shape. To re-record the
new one: ``RECORD_HISTORIES=1 pytest tests/inferencer/test_replay_shapes.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Replayer

from services.inferencer.workflows import SMALL_REQUEST_MAX_TEXTS, BertInferenceWorkflow
from shared.converter import data_converter
from shared.types import INFERENCE_WORKFLOW
from tests.conftest import running_workers
from tests.hardening.conftest import TrainedRun, copy_run

HISTORIES = Path(__file__).parents[1] / "histories"


async def test_small_and_large_request_histories_replay(
    client: Client, trained_run: TrainedRun, runs_root: Path
) -> None:
    copy_run(trained_run.run_dir, runs_root, "replay-shapes")
    shapes = {
        "replay-infer-small": ["great fun", "so sad"],
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
    for workflow_id in shapes:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        await replayer.replay_workflow(history)
    if os.environ.get("RECORD_HISTORIES"):
        history = await client.get_workflow_handle("replay-infer-small").fetch_history()
        (HISTORIES / "replay-infer-small.json").write_text(history.to_json(), encoding="utf-8")
