"""Aliases through a real Temporal server: promotion, inference by alias, the controller.

Two complete runs are made from one tiny run trained for real: ``run-a`` as trained and
``run-b`` with its label names upper-cased, so a prediction shows which model answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import urllib.request
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from bert_finetune import client_ops
from services.inferencer.workflows import BertInferenceWorkflow
from services.trainer.registry import TRAINER_WORKFLOWS
from services.trainer.worker import build_trainer_worker
from shared import aliases
from shared.converter import data_converter
from shared.export_types import export_workflow_id
from shared.onnx_export import EXPORT_DIR, has_export
from shared.runs import RUN_MANIFEST, commit_digest, list_runs
from shared.types import (
    FINE_TUNING_WORKFLOW,
    INFERENCE_WORKFLOW,
    PROMOTE_WORKFLOW,
    BertExperimentInput,
    BertExperimentOutput,
    BertInferenceRequest,
    BertInferenceResult,
    BertPromoteInput,
    BertPromoteOutput,
)
from tests.conftest import SentimentData, run_temporal_cli, running_workers, tiny_config
from tests.durability.harness import (
    long_config,
    long_run_csv,
    query_progress,
    wait_for,
)
from tests.helpers.exports import wait_for_export
from tests.helpers.processes import WorkerProcess
from tests.test_cli import cli

HISTORIES = Path(__file__).parent / "histories"
TEXTS = ["so great and fun", "awful and sad"]
# Far longer than a promotion takes, far shorter than the training that keeps the trainer busy.
PROMOTE_DEADLINE_SECONDS = 30


@pytest_asyncio.fixture(scope="module")
async def trained_dir(
    temporal_env: WorkflowEnvironment,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Path]:
    runs_root = tmp_path_factory.mktemp("alias_source")
    experiment = BertExperimentInput.model_validate(
        {"experiment_name": "alias-src", "runs": [tiny_config(tiny_model, sentiment_csv)]}
    )
    async with running_workers(temporal_env.client, runs_root, inferencer=False) as queues:
        output = await temporal_env.client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id=f"alias-src-{queues.training}",
            task_queue=queues.training,
            result_type=BertExperimentOutput,
        )
        await wait_for_export(temporal_env.client, output.runs[0].run_id)
    yield Path(output.runs[0].model_dir)


def make_run(source: Path, runs_root: Path, run_id: str, upper_labels: bool = False) -> str:
    """A complete copy of ``source`` under ``run_id`` (optionally with upper-case labels)."""
    target = runs_root / run_id
    shutil.copytree(source, target)
    if upper_labels:
        config_path = target / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["id2label"] = {k: v.upper() for k, v in config["id2label"].items()}
        config["label2id"] = {k.upper(): v for k, v in config["label2id"].items()}
        config_path.write_text(json.dumps(config), encoding="utf-8")
        # The ONNX export committed with the run names its labels too.
        export_path = target / "onnx" / "export.json"
        if export_path.is_file():
            export = json.loads(export_path.read_text(encoding="utf-8"))
            export["label_names"] = [name.upper() for name in export["label_names"]]
            export_path.write_text(json.dumps(export), encoding="utf-8")
    manifest = json.loads((target / RUN_MANIFEST).read_text(encoding="utf-8"))
    manifest["run_id"] = run_id
    (target / RUN_MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return run_id


@pytest.fixture
def two_runs(trained_dir: Path, runs_root: Path) -> tuple[str, str]:
    return (
        make_run(trained_dir, runs_root, "run-a"),
        make_run(trained_dir, runs_root, "run-b", upper_labels=True),
    )


async def promote(client: Client, queue: str, run_id: str, alias: str) -> BertPromoteOutput:
    return await asyncio.wait_for(
        client.execute_workflow(
            PROMOTE_WORKFLOW,
            BertPromoteInput(run_id=run_id, alias=alias),
            id=f"promote-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertPromoteOutput,
        ),
        timeout=PROMOTE_DEADLINE_SECONDS,
    )


async def infer(client: Client, queue: str, **model: str) -> BertInferenceResult:
    return await client.execute_workflow(
        INFERENCE_WORKFLOW,
        BertInferenceRequest(texts=TEXTS, **model),
        id=f"infer-{uuid.uuid4()}",
        task_queue=queue,
        result_type=BertInferenceResult,
    )


async def test_inference_by_alias_follows_every_promotion_at_once(
    client: Client, runs_root: Path, two_runs: tuple[str, str]
) -> None:
    run_a, run_b = two_runs
    async with running_workers(client, runs_root) as queues:
        created = await promote(client, queues.training, run_a, "prod")
        assert (created.run_id, created.previous_run_id) == (run_a, None)
        served = await infer(client, queues.inference, alias="prod")
        assert (served.run_id, served.label_names) == (run_a, ["positive", "negative"])

        # run-a's model is now cached; the very next request after a promotion gets run-b.
        moved = await promote(client, queues.training, run_b, "prod")
        assert (moved.run_id, moved.previous_run_id) == (run_b, run_a)
        served = await infer(client, queues.inference, alias="prod")
        assert (served.run_id, served.label_names) == (run_b, ["POSITIVE", "NEGATIVE"])

        back = await promote(client, queues.training, run_a, "prod")
        assert back.previous_run_id == run_b
        assert (await infer(client, queues.inference, alias="prod")).run_id == run_a
        # The run id path is unchanged next to aliases.
        assert (await infer(client, queues.inference, run_id=run_b)).run_id == run_b

        with pytest.raises(WorkflowFailureError) as unknown:
            await infer(client, queues.inference, alias="staging")
    assert "RunNotFound" in client_ops.failure_message(unknown.value)
    assert [run.run_id for run in list_runs(runs_root)] == [run_a, run_b]


def reuse_of(runs_root: Path, run_id: str, source: str) -> str:
    """A complete run that reused ``source``'s model (a pointer pinning its commit)."""
    record = json.loads((runs_root / source / RUN_MANIFEST).read_text(encoding="utf-8"))
    record.update(
        run_id=run_id, reused_from=source, source_commit=commit_digest(runs_root / source)
    )
    (runs_root / run_id).mkdir()
    (runs_root / run_id / RUN_MANIFEST).write_text(json.dumps(record), encoding="utf-8")
    return run_id


async def test_a_refused_promotion_never_moves_the_alias(
    client: Client, runs_root: Path, two_runs: tuple[str, str]
) -> None:
    """A run that reused run-a's model cannot be served once run-a is committed anew
    (overwritten): promoting it is refused with RunNotFound before the pointer moves, and
    the alias keeps serving the run it pointed at."""
    run_a, run_b = two_runs
    reusing = reuse_of(runs_root, "run-reuse", run_a)
    async with running_workers(client, runs_root) as queues:
        await promote(client, queues.training, run_b, "prod")
        pointer = (runs_root / "_aliases" / "prod.json").read_bytes()
        # run-a is overwritten: a new commit, so not the model run-reuse was made from.
        record = json.loads((runs_root / run_a / RUN_MANIFEST).read_text(encoding="utf-8"))
        record["result"]["train_loss"] = 0.123
        (runs_root / run_a / RUN_MANIFEST).write_text(json.dumps(record), encoding="utf-8")

        with pytest.raises(WorkflowFailureError) as refused:
            await promote(client, queues.training, reusing, "prod")
        message = client_ops.failure_message(refused.value)
        assert "RunNotFound" in message and f"reused the model of run {run_a!r}" in message
        assert (runs_root / "_aliases" / "prod.json").read_bytes() == pointer
        assert aliases.resolve_alias(runs_root, "prod") == run_b
        served = await infer(client, queues.inference, alias="prod")
        assert (served.run_id, served.label_names) == (run_b, ["POSITIVE", "NEGATIVE"])


async def test_the_cli_promotes_and_predicts_by_alias(
    client: Client, runs_root: Path, two_runs: tuple[str, str]
) -> None:
    """``client_ops`` as the CLI calls it: a chunked ``predict @ALIAS`` answers with the run
    the alias resolved to, and every chunk is served by that one run."""
    run_a, run_b = two_runs
    async with running_workers(client, runs_root) as queues:
        result = await client_ops.promote(client, run_b, "prod", queues.training)
        assert (result.alias, result.run_id, result.previous_run_id) == ("prod", run_b, None)
        texts = [("so good " if i % 2 else "so bad ") * 2000 for i in range(100)]
        requests = client_ops.inference_requests("@prod", texts, max_seq_length=16)
        assert len(requests) > 1 and requests[0].alias == "prod"
        answer = await client_ops.run_inference(client, requests, queues.inference)
    assert answer.run_id == run_b
    assert answer.label_names == ["POSITIVE" if i % 2 else "NEGATIVE" for i in range(100)]


async def test_promote_predict_and_runs_through_the_cli_process(
    client: Client, runs_root: Path, two_runs: tuple[str, str]
) -> None:
    run_a, run_b = two_runs
    async with running_workers(client, runs_root) as queues:
        code, out, err = await cli(client, queues, runs_root, "promote", run_a, "prod")
        assert code == 0, err
        assert "Alias prod now serves run run-a (a new alias)" in out
        code, out, err = await cli(client, queues, runs_root, "promote", run_b, "prod")
        assert code == 0, err
        assert "it pointed at run-a" in out
        code, out, err = await cli(client, queues, runs_root, "predict", "@prod", *TEXTS, "--json")
        assert code == 0, err
        assert json.loads(out)["run_id"] == run_b
        code, out, err = await cli(client, queues, runs_root, "predict", "@prod", *TEXTS)
        assert code == 0, err
        assert "run run-b (alias prod)" in out

        code, out, err = await cli(client, queues, runs_root, "promote", run_a, "_hidden")
        assert code == 1 and out == ""
        assert err.startswith("error: [InvalidConfig] alias:") and len(err.splitlines()) == 1

    aliases.promote(runs_root, run_a, "canary")
    shutil.rmtree(runs_root / run_a)  # canary now points at a run that is gone
    code, out, err = await cli(client, queues, runs_root, "runs", "--json")
    assert code == 0, err
    assert [(r["run_id"], r["aliases"]) for r in json.loads(out)] == [(run_b, ["prod"])]
    code, out, err = await cli(client, queues, runs_root, "runs")
    assert code == 0, err
    assert "@prod" in out
    assert "alias canary points at run-a, which no longer exists" in out
    assert "_aliases" not in out


async def test_promotion_and_inference_by_alias_through_the_temporal_cli(
    client: Client, runs_root: Path, two_runs: tuple[str, str]
) -> None:
    run_a, run_b = two_runs
    address = client.service_client.config.target_host
    async with running_workers(client, runs_root) as queues:
        for run_id, previous in ((run_a, None), (run_b, run_a)):
            promoted = await run_temporal_cli(
                address,
                "workflow",
                "execute",
                "--type",
                PROMOTE_WORKFLOW,
                "--task-queue",
                queues.training,
                "--workflow-id",
                f"cli-promote-{uuid.uuid4()}",
                "--input",
                json.dumps({"run_id": run_id, "alias": "prod"}),
            )
            assert promoted["result"] == {
                "alias": "prod",
                "run_id": run_id,
                "previous_run_id": previous,
                "exported": True,
                # A plain promotion: no rollout, no gate.
                "canary_run_id": None,
                "canary_percent": None,
                "shadow_run_id": None,
                "gate": None,
            }
            served = await run_temporal_cli(
                address,
                "workflow",
                "execute",
                "--type",
                INFERENCE_WORKFLOW,
                "--task-queue",
                queues.inference,
                "--workflow-id",
                f"cli-infer-{uuid.uuid4()}",
                "--input",
                json.dumps({"alias": "prod", "texts": TEXTS}),
            )
            assert served["result"]["run_id"] == run_id


async def test_promoting_a_run_without_an_export_exports_it(
    client: Client, runs_root: Path, two_runs: tuple[str, str]
) -> None:
    run_a, run_b = two_runs
    shutil.rmtree(runs_root / run_a / EXPORT_DIR)  # e.g. trained before exports existed
    async with running_workers(client, runs_root) as queues:
        promoted = await promote(client, queues.training, run_a, "prod")
        # Served at once (by PyTorch); the export follows, in its own workflow.
        assert promoted.exported is False
        export = await wait_for_export(client, run_a)
        assert (export.outcome, export.exported_run_id) == ("exported", run_a)
        assert has_export(runs_root / run_a)
        # A run that has one is promoted without starting an export.
        assert (await promote(client, queues.training, run_b, "prod")).exported is True
    with pytest.raises(RPCError):
        await client.get_workflow_handle(export_workflow_id(run_b)).describe()


async def test_promotion_completes_while_the_only_trainer_is_busy_training(
    client: Client, runs_root: Path, two_runs: tuple[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    """The trainer's single activity slot trains a long run; a promotion on the same queue
    still completes, because it is a local activity of the workflow task."""
    train, validation = long_run_csv(tmp_path, rows=2000)
    async with running_workers(client, runs_root, inferencer=False) as queues:
        training = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            {
                "experiment_name": "busy",
                "runs": [long_config(tiny_model, train, validation, num_epochs=20)],
            },
            id=f"busy-{uuid.uuid4()}",
            task_queue=queues.training,
        )

        async def training_steps() -> bool:
            (run,) = (await query_progress(training)).runs
            return run.phase == "training" and run.global_step > 0

        await wait_for(training_steps, "the long run to train", timeout=120)
        result = await promote(client, queues.training, two_runs[0], "prod")
        assert result.run_id == two_runs[0]
        (run,) = (await query_progress(training)).runs
        assert run.state == "running"  # the slot was busy the whole time
        await training.cancel()
        with pytest.raises(WorkflowFailureError):
            await training.result()


async def _pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> int:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    return len(response.pollers)


async def test_a_controller_alone_promotes_and_never_trains(
    client: Client, runs_root: Path, two_runs: tuple[str, str]
) -> None:
    queue = f"controller-{uuid.uuid4()}"
    controller = build_trainer_worker(
        client,
        task_queue=queue,
        runs_root=runs_root,
        graceful_shutdown=timedelta(seconds=5),
        no_remote_activities=True,
    )
    async with controller:
        result = await promote(client, queue, two_runs[1], "prod")
        assert result.run_id == two_runs[1]
        assert await _pollers(client, queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW) == 1
        assert await _pollers(client, queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY) == 0


def _http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        return int(response.status)


async def test_the_controller_process_serves_health_and_loads_no_torch(
    client: Client, runs_root: Path, two_runs: tuple[str, str], tmp_path: Path
) -> None:
    """``bert-finetune worker controller`` as deployed: ready on /readyz, promotes, and never
    maps libtorch into its memory."""
    queue = f"controller-{uuid.uuid4()}"
    worker = WorkerProcess(
        client.service_client.config.target_host,
        queue,
        runs_root,
        tmp_path / "controller.log",
        role="controller",
    )
    try:
        base = f"http://127.0.0.1:{worker.metrics_port}"

        async def ready() -> bool:
            try:
                return await asyncio.to_thread(_http_status, f"{base}/readyz") == 200
            except OSError:
                return False

        await wait_for(ready, "the controller to be ready", timeout=60)
        result = await promote(client, queue, two_runs[0], "prod")
        assert result.run_id == two_runs[0]
        maps = Path(f"/proc/{worker.process.pid}/maps").read_text(encoding="utf-8")
        assert "libtorch" not in maps
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=30) == 0
    finally:
        worker.stop()
    assert worker.events("alias.promoted")


async def test_promote_histories_replay(
    client: Client, runs_root: Path, two_runs: tuple[str, str], trained_dir: Path
) -> None:
    """Fresh promote histories (success, re-promotion, a missing run, a run without an
    export) replay; recorded ones are replayed by tests/test_replay.py. Record new ones with
    RECORD_HISTORIES=1 (a recorded file is never overwritten)."""
    ids = [
        "replay-promote",
        "replay-promote-again",
        "replay-promote-missing",
        "replay-promote-exports",
    ]
    unexported = make_run(trained_dir, runs_root, "run-c")
    shutil.rmtree(runs_root / unexported / EXPORT_DIR)
    run_ids = [*two_runs, "never-trained", unexported]
    async with running_workers(client, runs_root, inferencer=False) as queues:
        for workflow_id, run_id in zip(ids, run_ids, strict=True):
            handle = await client.start_workflow(
                PROMOTE_WORKFLOW,
                {"run_id": run_id, "alias": "prod"},
                id=f"{workflow_id}-{uuid.uuid4()}",
                task_queue=queues.training,
            )
            try:
                await handle.result()
            except WorkflowFailureError:
                assert run_id == "never-trained"
            history = await handle.fetch_history()
            replayer = Replayer(
                workflows=[*TRAINER_WORKFLOWS, BertInferenceWorkflow],
                data_converter=data_converter,
            )
            await replayer.replay_workflow(history)
            path = HISTORIES / f"{workflow_id}.json"
            if os.environ.get("RECORD_HISTORIES") and not path.exists():
                path.write_text(history.to_json(), encoding="utf-8")
        await wait_for_export(client, unexported)
