"""Worker log lines are JSON and carry the Temporal context of the activity they came from."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import WorkerProcess
from tests.observability.conftest import ObservedStack

CONTEXT = ("workflow_id", "run_id", "activity_attempt", "task_queue")


def records(worker: WorkerProcess) -> list[dict]:
    parsed = []
    for line in worker.log_lines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{worker.role} wrote a line that is not JSON: {line[:300]}")
    return parsed


def events(worker: WorkerProcess, name: str) -> list[dict]:
    return [r for r in records(worker) if r.get("event") == name]


def assert_context(record: dict, run_id: str, task_queue: str) -> None:
    missing = [key for key in CONTEXT if key not in record]
    assert not missing, f"{record['event']} lacks {missing}: {record}"
    assert record["run_id"] == run_id
    assert record["task_queue"] == task_queue
    assert record["activity_attempt"] >= 1
    assert record["level"] and record["timestamp"]


def test_every_worker_line_is_json(observed: ObservedStack) -> None:
    for worker in (observed.trainer, observed.inferencer):
        lines = records(worker)
        assert any(r.get("event") == "worker.started" for r in lines), worker.role
        # The SDK's own context lands in fields, never appended to the event name.
        assert not [r["event"] for r in lines if "'workflow_id':" in str(r.get("event"))]
        # LOG_LEVEL=DEBUG (the inferencer here) must not let the SDK dump payloads.
        assert not [r for r in lines if "texts" in str(r.get("event"))]


def test_workflow_lines_carry_the_workflow_context(observed: ObservedStack) -> None:
    started = events(observed.trainer, "experiment.started")
    assert len(started) == 2
    for record in started:
        assert record["workflow_id"].startswith("obs-")
        assert record["task_queue"] == observed.training_queue
        assert record["workflow_type"] == "BertFineTuningWorkflow"
        assert record["workflow_run_id"] and "run_id" not in record


def test_training_events_carry_the_activity_context(observed: ObservedStack) -> None:
    for name in ("training.attempt_started", "training.step", "training.checkpoint", "model.saved"):
        found = [r for r in events(observed.trainer, name) if r.get("run_id") == observed.run_id]
        assert found, f"no {name} event for {observed.run_id}"
        for record in found:
            assert_context(record, observed.run_id, observed.training_queue)
    steps = [r for r in events(observed.trainer, "training.step") if "loss" in r]
    assert len(steps) >= 5 and all(isinstance(r["loss"], float) for r in steps)
    failed = [r for r in events(observed.trainer, "training.failed")]
    assert [r["error_type"] for r in failed] == ["DatasetError"]
    assert_context(failed[0], observed.failed_run_id, observed.training_queue)


def test_inference_events_carry_the_activity_context(observed: ObservedStack) -> None:
    batches = events(observed.inferencer, "inference.batch")
    done = events(observed.inferencer, "inference.done")
    assert len(done) == 6 and len(batches) >= 6
    for record in [*batches, *done]:
        assert_context(record, observed.run_id, observed.inference_queue)
    loaded = events(observed.inferencer, "model.loaded")
    assert len(loaded) == 1
    assert_context(loaded[0], observed.run_id, observed.inference_queue)
