"""Two workflows with the same experiment name never train into the same run folder."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from services.trainer.run_folder import ownership
from services.trainer.worker import build_trainer_worker
from shared.errors import INVALID_CONFIG
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.conftest import TEST_LOCAL_PATH_ROOTS
from tests.durability.harness import long_config, long_run_csv, query_progress, task_queue


def test_claim_refuses_a_running_owner_and_takes_over_a_finished_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "exp-run-0-m"
    run_dir.mkdir()
    ownership.claim(run_dir, "first", is_running=lambda _: True)
    ownership.claim(run_dir, "first", is_running=lambda _: True)  # a retry of the owner
    with pytest.raises(ApplicationError) as refused:
        ownership.claim(run_dir, "second", is_running=lambda wid: wid == "first")
    assert refused.value.type == INVALID_CONFIG and "'first'" in refused.value.message
    assert not ownership.owned_by(run_dir, "second")
    ownership.claim(run_dir, "second", is_running=lambda _: False)  # the first one ended
    assert ownership.owner_of(run_dir) == "second" and ownership.owned_by(run_dir, "second")


async def test_second_workflow_with_the_same_name_is_refused_while_the_first_trains(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path
) -> None:
    train, validation = long_run_csv(tmp_path, rows=2000)
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "shared-name",
            "runs": [long_config(tiny_model, train, validation, num_epochs=2)],
        }
    )
    queue = task_queue()
    async with build_trainer_worker(
        client,
        task_queue=queue,
        runs_root=runs_root,
        max_concurrent_activities=2,
        local_path_roots=TEST_LOCAL_PATH_ROOTS,
    ):
        first = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id=f"first-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )
        for _ in range(240):  # until the first workflow has claimed the folder and trains
            (run,) = (await query_progress(first)).runs
            if run.phase == "training":
                break
            await asyncio.sleep(0.25)
        second = await client.start_workflow(
            FINE_TUNING_WORKFLOW, experiment, id=f"second-{uuid.uuid4()}", task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as refused:
            await asyncio.wait_for(second.result(), timeout=60)
        output = await asyncio.wait_for(first.result(), timeout=180)
    cause = refused.value.cause
    while not isinstance(cause, ApplicationError) and cause is not None:
        cause = cause.__cause__ or getattr(cause, "cause", None)
    assert isinstance(cause, ApplicationError) and cause.type == INVALID_CONFIG
    assert first.id in cause.message and "is being trained by workflow" in cause.message
    # The refused workflow left the first one's folder alone, and it finished normally.
    assert (Path(output.runs[0].model_dir) / "run.json").is_file()
