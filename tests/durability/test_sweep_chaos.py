"""A sweep under repeated worker loss: 20 trials with successive halving while every trainer
is killed with SIGKILL again and again, including a blackout with none alive, ends with
every trial succeeded or pruned exactly as the halving rule decides from each trial's
evaluation at the end of each rung's epoch.

Real trainer processes (``bert-finetune worker trainer``), a real Temporal server, the tiny
BERT, real files. Bounded: the blackout comes first, as soon as a trial has reported its first
rung while a trainer is training (so the sweep is certainly still running, however fast the
machine: 20 trials cannot have finished when the first reaches epoch 1), then a fixed, seeded
schedule of single kills (each 6-15 s after the last, of a trainer that is training when one
is, so that each kill costs an attempt), then the sweep is given a deadline. Slow tier
(``make test-slow``).
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from services.trainer.orchestration.run_workflow import run_workflow_id
from services.trainer.orchestration.sweep_rules import halving_rungs, keeps_training
from shared.runs import read_record
from shared.sweep_types import (
    RUNG_REACHED_SIGNAL,
    SWEEP_WORKFLOW,
    BertSweepOutput,
    RungReport,
    SuccessiveHalving,
)
from tests.durability.harness import long_config, long_run_csv, task_queue
from tests.helpers.processes import WorkerProcess

pytestmark = pytest.mark.slow

TRIALS = 20
TRAINERS = 3
EPOCHS = 3  # rungs at epochs 1 and 2
KILL_ROUNDS = 12  # the blackout, then single kills round-robin over the trainers
BLACKOUT_SECONDS = 10
SWEEP_DEADLINE_SECONDS = 900


def _training(worker: WorkerProcess) -> bool:
    """Whether the trainer is running a training attempt now (its in-flight gauge)."""
    try:
        with urllib.request.urlopen(f"{worker.base_url}/metrics", timeout=2) as response:  # noqa: S310 (loopback)
            for line in response.read().decode().splitlines():
                if line.startswith("bert_training_runs_in_flight "):
                    return float(line.split()[1]) > 0
    except OSError:  # still starting (or just killed)
        pass
    return False


async def _victim(trainers: list[WorkerProcess], turn: int) -> int:
    """The next trainer in turn that is training (waiting up to 5 s for one), so that each
    kill loses an attempt; the one whose turn it is when none is."""
    order = [(turn + k) % len(trainers) for k in range(len(trainers))]
    for _ in range(10):
        busy = await asyncio.gather(*(asyncio.to_thread(_training, trainers[i]) for i in order))
        for index, training in zip(order, busy, strict=True):
            if training:
                return index
        await asyncio.sleep(0.5)
    return order[0]


async def _rung_reports(client: Client, sweep_id: str) -> list[RungReport]:
    """The ``rung_reached`` signals in the order the sweep handled them (history order)."""
    reports = []
    async for event in client.get_workflow_handle(sweep_id).fetch_history_events():
        if event.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            continue
        attributes = event.workflow_execution_signaled_event_attributes
        if attributes.signal_name == RUNG_REACHED_SIGNAL:
            (report,) = await client.data_converter.decode(attributes.input.payloads, [RungReport])
            reports.append(report)
    return reports


async def _executions(client: Client, workflow_id: str) -> tuple[int, int]:
    """(activity executions, attempts that failed or timed out) in a trial's history."""
    scheduled = lost = 0
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled += 1
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            lost += event.activity_task_started_event_attributes.attempt - 1
    return scheduled, lost


async def test_a_sweep_under_repeated_sigkills_of_every_trainer_follows_the_halving_rule(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path, rows=80)  # 20 steps per epoch
    config = long_config(tiny_model, train, validation, num_epochs=EPOCHS, checkpoint_steps=5)
    rng = random.Random(19)
    learning_rates = sorted({round(rng.uniform(0.0005, 0.02), 5) for _ in range(TRIALS * 2)})
    learning_rates = rng.sample(learning_rates, TRIALS)
    started_workers = 0

    def trainer() -> WorkerProcess:
        nonlocal started_workers
        started_workers += 1
        log = tmp_path / f"trainer-{started_workers}.log"
        return WorkerProcess(address, queue, runs_root, log)

    trainers = [trainer() for _ in range(TRAINERS)]
    kills = 0
    blackout_at: float | None = None

    async def anyone_training() -> bool:
        busy = await asyncio.gather(*(asyncio.to_thread(_training, w) for w in trainers))
        return any(busy)

    async def chaos() -> None:
        nonlocal kills, blackout_at
        # Every trainer gone at once, for a while: once a trial has reported its first rung
        # (the sweep is then certainly running) and while a trainer trains (an attempt lost).
        while not (await _rung_reports(client, handle.id) and await anyone_training()):
            await asyncio.sleep(0.5)
        for worker in trainers:
            worker.stop()
        kills += len(trainers)
        blackout_at = time.monotonic() - started
        await asyncio.sleep(BLACKOUT_SECONDS)
        trainers[:] = [trainer() for _ in trainers]
        for round_ in range(1, KILL_ROUNDS):
            await asyncio.sleep(rng.uniform(6, 15))
            index = await _victim(trainers, round_)
            trainers[index].stop()  # SIGKILL
            kills += 1
            trainers[index] = trainer()

    early_stopping = SuccessiveHalving(type="successive_halving", reduction_factor=2)
    started = time.monotonic()
    killer: asyncio.Task[None] | None = None
    try:
        handle = await client.start_workflow(
            SWEEP_WORKFLOW,
            {
                "sweep_name": "chaos-sweep",
                "base": config,
                "space": {"learning_rate": {"values": learning_rates}},
                "strategy": "grid",
                "max_concurrent_trials": TRAINERS + 1,
                "early_stopping": early_stopping.model_dump(),
                "heartbeat_timeout_seconds": 5,
            },
            id=f"chaos-sweep-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertSweepOutput,
        )
        killer = asyncio.create_task(chaos())
        output = await asyncio.wait_for(handle.result(), timeout=SWEEP_DEADLINE_SECONDS)
        sweep_done_at = time.monotonic() - started
    finally:
        if killer is not None:  # also when the sweep failed: no kill outlives the test
            killer.cancel()
        for worker in trainers:
            worker.stop()
    seconds = time.monotonic() - started

    # Every trial ended by the rule: none failed, however often its worker was lost.
    assert len(output.trials) == TRIALS
    assert {t.state for t in output.trials} <= {"succeeded", "pruned"}, [
        (t.run_id, t.state, t.error) for t in output.trials
    ]

    # The rule, replayed from the reports in the order the sweep handled them; each report
    # must be the trial's evaluation at the end of that rung's epoch, as its committed
    # run.json records it (a segment that trained past its pause would report a later one).
    rungs = halving_rungs(early_stopping, EPOCHS)
    by_run = {t.run_id: t for t in output.trials}
    arrivals: dict[int, list[tuple[int, float]]] = {}
    decided: dict[tuple[str, int], bool] = {}
    for report in await _rung_reports(client, handle.id):
        key = (report.run_id, report.epoch)
        if key in decided:
            continue
        trial = by_run[report.run_id]
        record = read_record(runs_root / report.run_id)
        (at_epoch,) = [e for e in record.eval_history if e.epoch == report.epoch]
        assert report.eval_metrics == pytest.approx(at_epoch.metrics), (report, at_epoch)
        arrivals.setdefault(report.epoch, []).append(
            (trial.trial_index, report.eval_metrics["eval_accuracy"])
        )
        decided[key] = keeps_training(arrivals[report.epoch], trial.trial_index, "eval_accuracy", 2)
    for trial in output.trials:
        record = read_record(runs_root / trial.run_id)
        reached = [r for r in rungs if (trial.run_id, r) in decided]
        assert reached == rungs[: len(reached)], "rungs are reported in order"
        pruned_at = next((r for r in reached if not decided[(trial.run_id, r)]), None)
        if pruned_at is None:
            assert reached == rungs and trial.state == "succeeded", trial
            assert record.epochs_completed == EPOCHS and not record.stopped_early
        else:
            assert reached[-1] == pruned_at and trial.state == "pruned", trial
            assert record.epochs_completed == pruned_at and record.stopped_early
        # One evaluation per epoch trained, each at the end of its epoch: nothing trained
        # past a pause and reported as an earlier rung.
        assert [(e.epoch, e.global_step) for e in record.eval_history] == [
            (epoch, 20 * epoch) for epoch in range(1, record.epochs_completed + 1)
        ]
    assert any(t.state == "pruned" for t in output.trials)
    assert any(t.state == "succeeded" for t in output.trials)

    executions = lost = 0
    for trial in output.trials:
        trial_executions, trial_lost = await _executions(
            client, run_workflow_id(handle.id, trial.run_id)
        )
        executions += trial_executions
        lost += trial_lost
    # The blackout (no trainer alive) came while the sweep was running, and kills cost attempts.
    assert blackout_at is not None and blackout_at < sweep_done_at, (blackout_at, sweep_done_at)
    assert lost > 0, "the kills cost attempts"
    measure(
        trials=TRIALS,
        kills=kills,
        blackout_at_s=blackout_at,
        attempts_lost=lost,
        activity_executions=executions,
        pruned=sum(t.state == "pruned" for t in output.trials),
        sweep_s=seconds,
    )
