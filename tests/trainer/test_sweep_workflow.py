"""The sweep workflow's orchestration on a real Temporal server, with a stand-in training
activity whose trial quality is a known function of the learning rate.

What is under test is the real workflows (sweep, per-run child), the real local activities
(Optuna proposals, the run-id check) and their conversation at halving rungs; the
end-to-end tests in ``tests/test_sweep_e2e.py`` train the tiny BERT for real.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError
from temporalio.worker import Replayer, Worker

from services.trainer.orchestration.run_workflow import run_workflow_id
from services.trainer.registry import TRAINER_WORKFLOWS, orchestration_activities
from shared.converter import data_converter
from shared.sweep_types import SWEEP_WORKFLOW, BertSweepOutput, SweepProgress
from shared.types import (
    FINE_TUNE_ACTIVITY,
    PROGRESS_QUERY,
    BertFineTuneRequest,
    BertFineTuneResult,
)
from tests.hardening.support import first_application_error

HISTORIES = Path(__file__).parents[1] / "histories"
RECORDING = bool(os.environ.get("RECORD_HISTORIES"))


def accuracy(learning_rate: float, epoch: int) -> float:
    """Known in advance: a larger learning rate is better, and every epoch helps a little."""
    return round(min(0.99, learning_rate * 10 + 0.01 * epoch), 6)


@dataclass
class StandInTrainer:
    requests: list[BertFineTuneRequest] = field(default_factory=list)
    fail_when: str | None = None  # a model_name that fails with DatasetError

    @activity.defn(name=FINE_TUNE_ACTIVITY)
    async def fine_tune_bert(self, request: BertFineTuneRequest) -> BertFineTuneResult:
        self.requests.append(request)
        config = request.config
        if config.model_name == self.fail_when:
            from temporalio.exceptions import ApplicationError

            raise ApplicationError("no such column", type="DatasetError", non_retryable=True)
        epoch = request.pause_at_epoch or request.finish_at_epoch or config.num_epochs
        value = accuracy(config.learning_rate, epoch)
        return BertFineTuneResult(
            run_id=request.run_id,
            config=config,
            train_loss=1 - value,
            eval_accuracy=value,
            training_time_seconds=0.01,
            num_parameters=1,
            model_dir=f"/runs/{request.run_id}",
            num_train_samples=10,
            train_samples_per_second=1000.0,
            label_names=["negative", "positive"],
            eval_metrics={"eval_accuracy": value, "eval_f1_macro": value, "eval_loss": 1 - value},
            epochs_completed=epoch,
            stopped_early=request.finish_at_epoch is not None,
            paused=request.pause_at_epoch is not None,
        )


@dataclass
class Env:
    client: Client
    queue: str
    trainer: StandInTrainer
    runs_root: Path

    async def sweep(self, sweep: dict, workflow_id: str | None = None) -> BertSweepOutput:
        return await self.client.execute_workflow(
            SWEEP_WORKFLOW,
            sweep,
            id=workflow_id or f"sweep-{uuid.uuid4()}",
            task_queue=self.queue,
            result_type=BertSweepOutput,
        )


@pytest_asyncio.fixture
async def env(client: Client, runs_root: Path) -> AsyncIterator[Env]:
    trainer = StandInTrainer()
    queue = f"sweep-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=TRAINER_WORKFLOWS,
        activities=[trainer.fine_tune_bert, *orchestration_activities(runs_root)],
    ):
        yield Env(client, queue, trainer, runs_root)


def sweep_input(**fields: object) -> dict:
    value: dict = {
        "sweep_name": "lr",
        "base": {"model_name": "tiny", "train_file": "t.csv", "num_epochs": 3},
        "space": {"learning_rate": {"values": [0.05, 0.001, 0.08, 0.02]}},
        "strategy": "grid",
        "max_concurrent_trials": 1,
    }
    value.update(fields)
    return value


async def test_grid_sweep_runs_every_point_in_order_and_picks_the_best(env: Env) -> None:
    output = await env.sweep(
        sweep_input(
            space={
                "learning_rate": {"values": [0.01, 0.05]},
                "batch_size": {"values": [8, 16]},
            },
            max_concurrent_trials=4,
        )
    )
    assert [t.params for t in output.trials] == [
        {"learning_rate": 0.01, "batch_size": 8},
        {"learning_rate": 0.01, "batch_size": 16},
        {"learning_rate": 0.05, "batch_size": 8},
        {"learning_rate": 0.05, "batch_size": 16},
    ]
    assert [t.run_id for t in output.trials] == [f"lr-run-{i}-tiny" for i in range(4)]
    assert {t.state for t in output.trials} == {"succeeded"}
    # Ties (same learning rate) favour the lower trial index.
    assert output.best_run_id == "lr-run-2-tiny"
    assert output.best_metric == accuracy(0.05, 3)
    assert output.alias is None
    sent = {r.run_id: r for r in env.trainer.requests}
    assert sent["lr-run-3-tiny"].config.batch_size == 16
    assert sent["lr-run-3-tiny"].context is not None
    assert sent["lr-run-3-tiny"].context.params == {"learning_rate": 0.05, "batch_size": 16}


async def test_random_sweep_is_reproducible_from_its_seed(env: Env) -> None:
    space = {"learning_rate": {"min": 1e-4, "max": 0.05, "log": True}, "seed": {"min": 0, "max": 9}}
    first = await env.sweep(sweep_input(strategy="random", space=space, num_trials=5, seed=7))
    again = await env.sweep(
        sweep_input(strategy="random", space=space, num_trials=5, seed=7, sweep_name="lr2")
    )
    other = await env.sweep(
        sweep_input(strategy="random", space=space, num_trials=5, seed=8, sweep_name="lr3")
    )
    params = [t.params for t in first.trials]
    assert [t.params for t in again.trials] == params
    assert [t.params for t in other.trials] != params
    scores = {t.run_id: t.eval_metrics["eval_accuracy"] for t in first.trials}
    assert first.best_run_id == max(scores, key=lambda run_id: scores[run_id])


async def test_successive_halving_prunes_the_weak_trials_at_the_rungs(env: Env) -> None:
    halving = {"type": "successive_halving", "reduction_factor": 2, "min_epochs": 1}
    output = await env.sweep(sweep_input(early_stopping=halving))
    # Learning rates 0.05, 0.001, 0.08, 0.02 arrive in that order (one at a time).
    # Rung 1: 0.05 keeps (n=1); 0.001 pruned (n=2, top 1 is 0.05); 0.08 keeps (n=3, top 1);
    # 0.02 pruned (n=4: top 2 are 0.08 and 0.05). Rung 2: 0.05 keeps (n=1), 0.08 keeps.
    states = [t.state for t in output.trials]
    assert states == ["succeeded", "pruned", "succeeded", "pruned"]
    assert [t.epochs_completed for t in output.trials] == [3, 1, 3, 1]
    assert output.best_run_id == "lr-run-2-tiny"
    pruned = output.trials[1]
    assert pruned.eval_metrics["eval_accuracy"] == accuracy(0.001, 1)
    segments = [
        (r.run_id, r.pause_at_epoch, r.finish_at_epoch, r.attempt_offset)
        for r in env.trainer.requests
    ]
    assert segments == [
        ("lr-run-0-tiny", 1, None, 0),
        ("lr-run-0-tiny", 2, None, 5),
        ("lr-run-0-tiny", None, None, 10),
        ("lr-run-1-tiny", 1, None, 0),
        ("lr-run-1-tiny", None, 1, 5),
        ("lr-run-2-tiny", 1, None, 0),
        ("lr-run-2-tiny", 2, None, 5),
        ("lr-run-2-tiny", None, None, 10),
        ("lr-run-3-tiny", 1, None, 0),
        ("lr-run-3-tiny", None, 1, 5),
    ]


async def test_tpe_with_one_trial_at_a_time_is_reproducible(env: Env) -> None:
    space = {"learning_rate": {"min": 1e-4, "max": 0.09, "log": True}}
    runs = [
        await env.sweep(sweep_input(strategy="tpe", space=space, num_trials=6, sweep_name=name))
        for name in ("tpe-a", "tpe-b")
    ]
    assert [t.params for t in runs[0].trials] == [t.params for t in runs[1].trials]
    assert len({t.params["learning_rate"] for t in runs[0].trials}) == 6


async def test_failed_trials_do_not_fail_the_sweep_unless_all_fail(env: Env) -> None:
    env.trainer.fail_when = "broken"
    mixed = await env.sweep(
        sweep_input(space={"model_name": {"values": ["tiny", "broken"]}}, sweep_name="mixed")
    )
    assert [t.state for t in mixed.trials] == ["succeeded", "failed"]
    assert "no such column" in (mixed.trials[1].error or "")
    assert mixed.best_run_id == "mixed-run-0-tiny"

    workflow_id = f"sweep-{uuid.uuid4()}"
    with pytest.raises(WorkflowFailureError) as failed:
        await env.sweep(
            sweep_input(space={"model_name": {"values": ["broken"]}}, promote_alias="never"),
            workflow_id,
        )
    error = first_application_error(failed.value)
    assert error is not None and error.type == "DatasetError"
    assert error.non_retryable and "no trial of sweep 'lr' succeeded" in error.message
    # A failed sweep promotes nothing: no promotion workflow was ever started.
    with pytest.raises(RPCError):
        await env.client.get_workflow_handle(f"{workflow_id}/promote").describe()


async def test_progress_query_lists_trials_and_the_best_so_far(env: Env) -> None:
    handle = await env.client.start_workflow(
        SWEEP_WORKFLOW,
        sweep_input(),
        id=f"sweep-{uuid.uuid4()}",
        task_queue=env.queue,
        result_type=BertSweepOutput,
    )
    await handle.result()
    progress = await handle.query(PROGRESS_QUERY, result_type=SweepProgress)
    assert progress.sweep_name == "lr" and progress.metric == "eval_accuracy"
    assert progress.num_trials == 4 and len(progress.trials) == 4
    assert progress.best_run_id == "lr-run-2-tiny"
    assert {t.state for t in progress.trials} == {"succeeded"}
    assert all(t.phase == "succeeded" for t in progress.trials)


async def test_a_sweep_with_pruning_replays(env: Env) -> None:
    """Rung reports and decisions interleave between two concurrent trials; the sweep and
    its children replay. ``RECORD_HISTORIES=1`` adds them to tests/histories/."""
    halving = {"type": "successive_halving", "reduction_factor": 3, "min_epochs": 1}
    handle = await env.client.start_workflow(
        SWEEP_WORKFLOW,
        sweep_input(
            early_stopping=halving,
            max_concurrent_trials=2,
            space={"learning_rate": {"values": [0.08, 0.05, 0.001, 0.002]}},
        ),
        # Child ids derive from this id: a recorded history replays under its file name.
        id=f"replay-sweep-halving-{uuid.uuid4()}" if not RECORDING else "replay-sweep-halving",
        task_queue=env.queue,
        result_type=BertSweepOutput,
    )
    output = await handle.result()
    assert [t.state for t in output.trials][2:] == ["pruned", "pruned"]
    assert output.best_run_id == "lr-run-0-tiny"
    histories = {"replay-sweep-halving": await handle.fetch_history()}
    for trial in output.trials:
        child = env.client.get_workflow_handle(run_workflow_id(handle.id, trial.run_id))
        histories[f"replay-sweep-halving-trial-{trial.trial_index}"] = await child.fetch_history()
    replayer = Replayer(workflows=TRAINER_WORKFLOWS, data_converter=data_converter)
    for name, history in histories.items():
        await replayer.replay_workflow(history)
        if RECORDING and name.endswith(("halving", "-0", "-2")):
            (HISTORIES / f"{name}.json").write_text(history.to_json(), encoding="utf-8")
