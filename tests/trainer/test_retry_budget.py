"""Worker loss never exhausts a run while it makes progress: the retry budget counts only
attempts that add no checkpoint.

The activity here is a stand-in registered under ``fine_tune_bert`` that fails like a lost
worker (a retryable error) on a scripted list of attempts, sealing a real checkpoint
manifest in the run folder on some of them. What is under test is the real run workflow
(``BertRunWorkflow``, ``RunLifecycle``) and the real local activity that reads the run
folder, on Temporal's time-skipping test server so the retry backoff costs no time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from services.trainer.orchestration.run_lifecycle import TRAINING_RETRY_POLICY
from services.trainer.registry import TRAINER_WORKFLOWS, orchestration_activities
from services.trainer.run_folder import checkpoints
from shared.converter import data_converter
from shared.sweep_types import RUN_WORKFLOW, BertRunInput
from shared.types import (
    FINE_TUNE_ACTIVITY,
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertFineTuneResult,
)
from tests.helpers.binaries import temporal_test_server

BUDGET = TRAINING_RETRY_POLICY.maximum_attempts or 1
RUN_ID = "lossy-run-0-tiny"
STEPS_PER_ATTEMPT = 10


def _result(request: BertFineTuneRequest, resumed_from: int | None) -> BertFineTuneResult:
    return BertFineTuneResult(
        run_id=request.run_id,
        config=request.config,
        train_loss=0.1,
        eval_accuracy=None,
        training_time_seconds=1.0,
        num_parameters=1,
        model_dir=f"/runs/{request.run_id}",
        num_train_samples=1,
        train_samples_per_second=1.0,
        label_names=["a", "b"],
        resumed_from_step=resumed_from,
    )


def _lossy_trainer(
    runs_root: Path, seals: Callable[[int], bool], succeeds_at: int | None, seen: list[int]
) -> Callable[..., object]:
    """Attempt ``n`` seals a checkpoint at step 10n when ``seals(n)``, then is lost (the
    worker died), until attempt ``succeeds_at`` finishes."""

    @activity.defn(name=FINE_TUNE_ACTIVITY)
    async def lossy(request: BertFineTuneRequest) -> BertFineTuneResult:
        number = request.attempt_offset + activity.info().attempt
        seen.append(number)
        if number == succeeds_at:
            return _result(request, resumed_from=STEPS_PER_ATTEMPT * max(seen[:-1], default=0))
        if seals(number):
            step = STEPS_PER_ATTEMPT * number
            folder = checkpoints.checkpoint_dir(runs_root / request.run_id, number, step)
            folder.mkdir(parents=True)
            checkpoints.write_manifest(folder, step, number, "digest")
        raise ApplicationError(f"worker lost during attempt {number}", type="WorkerLost")

    return lossy


async def _run(
    runs_root: Path, seals: Callable[[int], bool], succeeds_at: int | None, name: str
) -> tuple[BertFineTuneResult | None, BaseException | None, list[int], WorkflowHistory]:
    seen: list[int] = []
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter, test_server_existing_path=temporal_test_server()
    )
    async with env:
        queue = f"lossy-{uuid.uuid4()}"
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=TRAINER_WORKFLOWS,
            activities=[
                _lossy_trainer(runs_root, seals, succeeds_at, seen),
                *orchestration_activities(runs_root),
            ],
        ):
            request = BertFineTuneRequest(
                run_id=RUN_ID, config=BertFineTuneConfig.model_validate({"train_file": "t.csv"})
            )
            handle = await env.client.start_workflow(
                RUN_WORKFLOW,
                BertRunInput(request=request, heartbeat_timeout_seconds=5),
                id=name,
                task_queue=queue,
                result_type=BertFineTuneResult,
            )
            result: BertFineTuneResult | None = None
            error: BaseException | None = None
            try:
                result = await handle.result()
            except WorkflowFailureError as failure:
                error = failure.cause
            history = await handle.fetch_history()
    await Replayer(workflows=TRAINER_WORKFLOWS, data_converter=data_converter).replay_workflow(
        history
    )
    if os.environ.get("RECORD_HISTORIES") and name.startswith("replay-"):
        target = Path(__file__).parents[1] / "histories" / f"{name}.json"
        if not target.exists():  # recorded histories are never overwritten
            target.write_text(history.to_json(), encoding="utf-8")
    return result, error, seen, history


async def test_lost_attempts_that_seal_checkpoints_never_exhaust_the_run(runs_root: Path) -> None:
    # Every third attempt seals a checkpoint before its worker is lost: 12 lost attempts,
    # more than twice the budget of 5, and the run still finishes at attempt 13.
    result, error, seen, _ = await _run(
        runs_root, lambda n: n % 3 == 1, succeeds_at=13, name="replay-run-progress"
    )
    assert error is None and result is not None, error
    assert seen == list(range(1, 14)), "attempt numbers keep increasing across executions"
    assert result.resumed_from_step == 120


async def test_a_run_fails_after_a_budget_of_attempts_in_a_row_without_a_checkpoint(
    runs_root: Path,
) -> None:
    # Attempt 1 seals one, then nothing: the first execution earned another, whose 5
    # attempts all ended without a new checkpoint, so the run fails with the last error.
    result, error, seen, _ = await _run(
        runs_root, lambda n: n == 1, succeeds_at=None, name="lossy-run-no-progress"
    )
    assert result is None
    assert isinstance(error, ApplicationError) and error.type == "WorkerLost", error
    assert seen == list(range(1, 2 * BUDGET + 1))


@pytest.mark.parametrize("seals_first", [False, True])
async def test_an_execution_without_a_new_checkpoint_fails_as_before(
    runs_root: Path, seals_first: bool
) -> None:
    # No checkpoint at all, or only ones older than this execution: one budget, then fail.
    if seals_first:
        folder = checkpoints.checkpoint_dir(runs_root / RUN_ID, 0, 5)
        folder.mkdir(parents=True)
        checkpoints.write_manifest(folder, 5, 0, "digest")
    result, error, seen, _ = await _run(
        runs_root, lambda n: False, succeeds_at=None, name=f"lossy-run-none-{seals_first}"
    )
    assert result is None and isinstance(error, ApplicationError)
    assert seen == list(range(1, BUDGET + 1))
