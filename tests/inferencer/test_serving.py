"""Through Temporal: which backend serves a run, and the small-request call shape.

A run with an ONNX export is served by ONNX Runtime, one without by PyTorch; a request of
at most one batch runs as a local activity when its model is loaded on the worker (a cold
one runs as a regular activity, which loads it: never inside a workflow task), a larger one
as a regular activity. Both call shapes take the same plain JSON, from the Python client and
from the ``temporal`` CLI.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from services.inferencer.classifiers import OnnxClassifier, TorchClassifier
from services.inferencer.workflows import SMALL_REQUEST_MAX_TEXTS
from shared.onnx_export import EXPORT_DIR, export_onnx
from shared.types import (
    FINE_TUNING_WORKFLOW,
    INFERENCE_WORKFLOW,
    BertInferenceRequest,
    BertInferenceResult,
)
from tests.conftest import SentimentData, run_temporal_cli, running_workers, tiny_config
from tests.hardening.conftest import TrainedRun, copy_run
from tests.tiny import sentiment_rows

TEXTS = [text for text, _ in sentiment_rows(12, seed=21)]


def ignore_batches(done: int, size: int) -> None:
    del done, size


async def infer(client: Client, queue: str, run_id: str, texts: list[str]) -> BertInferenceResult:
    return await client.execute_workflow(
        INFERENCE_WORKFLOW,
        BertInferenceRequest(run_id=run_id, texts=texts),
        id=f"serving-{uuid.uuid4()}",
        task_queue=queue,
        result_type=BertInferenceResult,
    )


async def event_types(client: Client, workflow_id: str) -> set[int]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return {event.event_type for event in history.events}


def runs_without_export(trained_run: TrainedRun, runs_root: Path, *run_ids: str) -> list[Path]:
    dirs = [copy_run(trained_run.run_dir, runs_root, run_id) for run_id in run_ids]
    for run_dir in dirs:
        shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)
    return dirs


async def test_a_run_with_an_export_is_served_by_onnx_runtime_and_one_without_by_pytorch(
    client: Client, trained_run: TrainedRun, tiny_model: Path, runs_root: Path, tmp_path: Path
) -> None:
    exported, plain = runs_without_export(trained_run, runs_root, "exported", "plain")
    # The exported run gets the export of a *different* (untrained) model: only a worker that
    # really serves the export answers with that model's label names and confidences.
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_model, foreign)
    shutil.copytree(export_onnx(foreign), exported / EXPORT_DIR)

    async with running_workers(client, runs_root, trainer=False) as queues:
        from_export = await infer(client, queues.inference, "exported", TEXTS)
        from_pytorch = await infer(client, queues.inference, "plain", TEXTS)

    expected_onnx = OnnxClassifier(exported).classify(TEXTS, 128, 32, ignore_batches)
    assert (from_export.labels, from_export.confidences) == (
        expected_onnx[0],
        expected_onnx[1],
    )
    assert set(from_export.label_names) <= {"LABEL_0", "LABEL_1"}
    expected_torch = TorchClassifier(plain, "cpu").classify(TEXTS, 128, 32, ignore_batches)
    assert from_pytorch.labels == expected_torch[0]
    assert from_pytorch.confidences == expected_torch[1]
    assert set(from_pytorch.label_names) <= {"negative", "positive"}


async def test_small_warm_requests_run_as_a_local_activity_cold_and_large_ones_as_an_activity(
    client: Client, trained_run: TrainedRun, runs_root: Path
) -> None:
    (run_dir,) = runs_without_export(trained_run, runs_root, "shapes")
    export_onnx(run_dir, [text for text, _ in sentiment_rows(200, seed=3)])
    many = [text for text, _ in sentiment_rows(SMALL_REQUEST_MAX_TEXTS + 8, seed=22)]

    async with running_workers(client, runs_root, trainer=False) as queues:
        # Cold: the local activity declines at once (ModelCold) and the regular activity
        # loads the model; the worker that declined warms it meanwhile.
        cold = await client.start_workflow(
            INFERENCE_WORKFLOW,
            {"run_id": "shapes", "texts": many[:2]},
            id=f"cold-{uuid.uuid4()}",
            task_queue=queues.inference,
        )
        cold_result = await cold.result()
        small = await client.start_workflow(
            INFERENCE_WORKFLOW,
            {"run_id": "shapes", "texts": many[:SMALL_REQUEST_MAX_TEXTS]},
            id=f"small-{uuid.uuid4()}",
            task_queue=queues.inference,
        )
        large = await client.start_workflow(
            INFERENCE_WORKFLOW,
            {"run_id": "shapes", "texts": many},
            id=f"large-{uuid.uuid4()}",
            task_queue=queues.inference,
        )
        small_result, large_result = await small.result(), await large.result()

    cold_events = await event_types(client, cold.id)
    assert EventType.EVENT_TYPE_MARKER_RECORDED in cold_events  # the declined local activity
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED in cold_events
    assert cold_result["labels"] == large_result["labels"][:2]
    small_events = await event_types(client, small.id)
    assert EventType.EVENT_TYPE_MARKER_RECORDED in small_events  # the local activity's result
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in small_events
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED in await event_types(client, large.id)
    # Same texts, same answers, whichever call shape served them.
    assert small_result["labels"] == large_result["labels"][:SMALL_REQUEST_MAX_TEXTS]
    assert small_result["label_names"] == large_result["label_names"][:SMALL_REQUEST_MAX_TEXTS]


async def test_a_small_request_from_the_temporal_cli_with_plain_json(
    client: Client, trained_run: TrainedRun, runs_root: Path, tmp_path: Path
) -> None:
    runs_without_export(trained_run, runs_root, "cli-small")
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps({"run_id": "cli-small", "texts": ["so great and fun", "awful and sad"]}),
        encoding="utf-8",
    )
    workflow_id = f"cli-small-{uuid.uuid4()}"
    async with running_workers(client, runs_root, trainer=False) as queues:
        await infer(client, queues.inference, "cli-small", ["warm it up"])  # loads the model
        executed = await run_temporal_cli(
            client.service_client.config.target_host,
            "workflow",
            "execute",
            "--type",
            INFERENCE_WORKFLOW,
            "--task-queue",
            queues.inference,
            "--workflow-id",
            workflow_id,
            "--input-file",
            str(request),
        )

    assert executed["status"].endswith("COMPLETED")
    assert executed["result"]["label_names"] == ["positive", "negative"]
    assert executed["result"]["run_id"] == "cli-small"
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in await event_types(
        client, workflow_id
    )


async def test_a_run_that_reused_another_runs_model_is_served_from_it(
    client: Client, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=2)
    async with running_workers(client, runs_root) as queues:
        run_ids = []
        for name in ("source", "pointer"):  # the same work under another name is reused
            output = await client.execute_workflow(
                FINE_TUNING_WORKFLOW,
                {"experiment_name": name, "runs": [config]},
                id=f"reuse-{name}-{uuid.uuid4()}",
                task_queue=queues.training,
            )
            run_ids.append(output["runs"][0]["run_id"])
        assert output["runs"][0]["reused_from"] == run_ids[0]
        from_source = await infer(client, queues.inference, run_ids[0], TEXTS)
        from_pointer = await infer(client, queues.inference, run_ids[1], TEXTS)

    assert from_pointer.run_id == run_ids[1]
    assert (from_pointer.labels, from_pointer.confidences) == (
        from_source.labels,
        from_source.confidences,
    )
