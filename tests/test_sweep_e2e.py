"""Sweeps end to end: real Temporal server, real trainer worker, the tiny BERT, real files.

A grid sweep through the `temporal` CLI with plain JSON (``--input-file``), a random sweep
through ``bert-finetune sweep``, and successive halving on data where trial quality is
known in advance: a learning rate far too small cannot learn in one epoch, so those trials
are the ones pruned, and the best trial is the argmax of the metric.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from temporalio.client import Client
from temporalio.worker import Replayer

from services.inferencer.workflows import BertInferenceWorkflow
from services.trainer.orchestration.run_workflow import run_workflow_id
from services.trainer.registry import TRAINER_WORKFLOWS
from shared.aliases import resolve_alias
from shared.converter import data_converter
from shared.onnx_export import has_export
from shared.runs import is_complete, read_record
from shared.sweep_types import SWEEP_WORKFLOW, BertSweepOutput
from tests.conftest import SentimentData, run_temporal_cli, running_workers, tiny_config
from tests.helpers.exports import wait_for_export
from tests.test_cli import cli
from tests.tiny import sentiment_rows, write_csv

HISTORIES = Path(__file__).parent / "histories"
GOOD_LR = 0.005
# Far too small to move the tiny BERT in a few steps: such a trial stays at chance.
USELESS_LR = 1e-7


@pytest.fixture(scope="module")
def separable(tmp_path_factory: pytest.TempPathFactory) -> SentimentData:
    """800 rows: one epoch (50 steps) takes a good learning rate to high accuracy while a
    useless one stays at chance."""
    root = tmp_path_factory.mktemp("separable")
    return SentimentData(
        train=write_csv(root / "train.csv", sentiment_rows(800, seed=1)),
        validation=write_csv(root / "validation.csv", sentiment_rows(40, seed=2)),
    )


def base_config(tiny_model: Path, data: SentimentData, **overrides: object) -> dict:
    return tiny_config(tiny_model, data, **{"num_epochs": 2, **overrides})


async def test_grid_sweep_through_the_temporal_cli_with_plain_json(
    client: Client, tiny_model: Path, separable: SentimentData, runs_root: Path, tmp_path: Path
) -> None:
    sweep = {
        "sweep_name": "grid-json",
        "base": base_config(tiny_model, separable, num_epochs=1),
        "space": {"learning_rate": {"values": [USELESS_LR, GOOD_LR]}, "seed": {"values": [1]}},
        "strategy": "grid",
        "max_concurrent_trials": 2,
    }
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps(sweep), encoding="utf-8")
    address = client.service_client.config.target_host
    async with running_workers(client, runs_root, inferencer=False) as queues:
        executed = await run_temporal_cli(
            address,
            "workflow",
            "execute",
            "--type",
            SWEEP_WORKFLOW,
            "--task-queue",
            queues.training,
            "--workflow-id",
            "grid-json",
            "--input-file",
            str(spec),
        )
        query = await run_temporal_cli(
            address, "workflow", "query", "--workflow-id", "grid-json", "--name", "progress"
        )
    assert executed["status"].endswith("COMPLETED")
    output = BertSweepOutput.model_validate(executed["result"])
    assert [t.params for t in output.trials] == [
        {"learning_rate": USELESS_LR, "seed": 1},
        {"learning_rate": GOOD_LR, "seed": 1},
    ]
    assert [t.state for t in output.trials] == ["succeeded", "succeeded"]
    assert output.best_run_id == output.trials[1].run_id
    assert output.best_metric == output.trials[1].eval_metrics["eval_accuracy"]
    for trial in output.trials:
        assert set(trial.eval_metrics) >= {"eval_accuracy", "eval_f1_macro", "eval_loss"}
        assert trial.epochs_completed == 1
        assert is_complete(runs_root / trial.run_id)
    progress = query["queryResult"][0]
    assert progress["best_run_id"] == output.best_run_id
    assert [t["state"] for t in progress["trials"]] == ["succeeded", "succeeded"]


async def test_random_sweep_through_our_cli(
    client: Client, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "sweep_name": "random-cli",
                "base": base_config(tiny_model, sentiment_csv, num_epochs=1),
                "space": {"learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}},
                "strategy": "random",
                "num_trials": 3,
                "seed": 3,
            }
        ),
        encoding="utf-8",
    )
    async with running_workers(client, runs_root, inferencer=False) as queues:
        code, out, err = await cli(client, queues, runs_root, "sweep", str(spec), "--json")
        assert code == 0, err
        assert "Sweep random-cli: 3/3 trials done" in out
        output = BertSweepOutput.model_validate_json(out[out.index("{") :])
        assert f"best: {output.best_run_id}" in out
        best = max(output.trials, key=lambda t: (t.eval_metrics["eval_accuracy"], -t.trial_index))
        assert output.best_run_id == best.run_id
        # --no-wait prints the workflow id; the same seed proposes the same trials.
        again = spec.with_name("again.yaml")
        again.write_text(
            spec.read_text(encoding="utf-8").replace("random-cli", "random-again"), "utf-8"
        )
        code, out, err = await cli(client, queues, runs_root, "sweep", str(again), "--no-wait")
        assert code == 0, err
        assert out.strip() == "bert-sweep-random-again"
        second = await client.get_workflow_handle(
            "bert-sweep-random-again", result_type=BertSweepOutput
        ).result()
    assert [t.params for t in second.trials] == [t.params for t in output.trials]


async def test_successive_halving_prunes_the_weak_trials_and_picks_the_argmax(
    client: Client, tiny_model: Path, separable: SentimentData, runs_root: Path
) -> None:
    """One trial at a time, so trials reach the rung in index order: the first always goes
    on; a useless learning rate is then never among the best half; the second good trial
    is (n=4 keeps 2). Recorded for the replay tests with ``RECORD_HISTORIES=1``."""
    sweep = {
        "sweep_name": "halving",
        "base": base_config(tiny_model, separable, num_epochs=2),
        "space": {"learning_rate": {"values": [GOOD_LR, USELESS_LR, USELESS_LR * 2, 0.007]}},
        "strategy": "grid",
        "max_concurrent_trials": 1,
        "early_stopping": {"type": "successive_halving", "reduction_factor": 2},
        "promote_alias": "halving-best",
    }
    async with running_workers(client, runs_root, inferencer=False) as queues:
        handle = await client.start_workflow(
            SWEEP_WORKFLOW,
            sweep,
            id="replay-sweep-real-halving",
            task_queue=queues.training,
            result_type=BertSweepOutput,
        )
        output = await handle.result()
        # Only the best trial is exported (after the sweep, in its own workflow).
        assert (await wait_for_export(client, output.best_run_id)).outcome == "exported"
    assert [t.state for t in output.trials] == ["succeeded", "pruned", "pruned", "succeeded"]
    assert [t.epochs_completed for t in output.trials] == [2, 1, 1, 2]
    # The best is the argmax of the metric over succeeded trials (ties: lowest index).
    best = max(output.trials[::3], key=lambda t: (t.eval_metrics["eval_accuracy"], -t.trial_index))
    assert output.best_run_id == best.run_id
    assert output.best_metric == best.eval_metrics["eval_accuracy"]
    weak = [t.eval_metrics["eval_accuracy"] for t in output.trials[1:3]]
    assert max(weak) < min(t.eval_metrics["eval_accuracy"] for t in output.trials[::3])
    for trial in output.trials:
        record = read_record(runs_root / trial.run_id)
        assert record.stopped_early == (trial.state == "pruned")
        assert record.epochs_completed == trial.epochs_completed
        assert not (runs_root / trial.run_id / "checkpoints").exists()
        assert has_export(runs_root / trial.run_id) == (trial.run_id == output.best_run_id)
    # Promoted on success: the alias points at the best trial.
    assert resolve_alias(runs_root, "halving-best") == output.best_run_id
    assert output.alias == "halving-best"

    histories = {"replay-sweep-real-halving": await handle.fetch_history()}
    for trial in output.trials[:2]:
        child = client.get_workflow_handle(run_workflow_id(handle.id, trial.run_id))
        histories[
            f"replay-sweep-real-halving-trial-{trial.trial_index}"
        ] = await child.fetch_history()
    replayer = Replayer(
        workflows=[*TRAINER_WORKFLOWS, BertInferenceWorkflow], data_converter=data_converter
    )
    for name, history in histories.items():
        await replayer.replay_workflow(history)
        if os.environ.get("RECORD_HISTORIES"):
            (HISTORIES / f"{name}.json").write_text(history.to_json(), encoding="utf-8")
