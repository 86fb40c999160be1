"""Every bad fine-tuning input, through a real server and one shared trainer worker.

Each case must fail the workflow within seconds with the right non-retryable error type and
a message naming the field, write nothing outside BERT_RUNS_DIR and leave no run directory.
The worker survives the whole table and then trains a good experiment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from services.trainer.run_folder.run_directory import STAGING_DIR
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentOutput
from tests.conftest import SentimentData, running_workers, tiny_config
from tests.hardening.artefacts import Artefacts
from tests.hardening.cases import Case, Context, cases
from tests.hardening.support import (
    check_cli_failure,
    check_outcome,
    cli_env,
    expect_failure,
    gather_limited,
    one_case_per_area,
    run_cli,
    run_cli_in_process,
    snapshot,
)
from tests.helpers.exports import wait_for_export


@dataclass(frozen=True)
class TrainEnv:
    client: Client
    queue: str
    runs_root: Path
    context: Context
    cli_env: dict


@pytest_asyncio.fixture(scope="module")
async def train_env(
    temporal_env: WorkflowEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    artefacts: Artefacts,
) -> AsyncIterator[TrainEnv]:
    runs_root = tmp_path_factory.mktemp("hardening_train") / "bert_runs"
    runs_root.mkdir()
    client = temporal_env.client
    # The trainer may read the test's data, models and bad files, and nothing beside them
    # (``artefacts.forbidden`` plays other tenants' data and mounted secrets).
    roots = (artefacts.root, sentiment_csv.train.parent, tiny_model, runs_root)
    async with running_workers(
        client, runs_root, inferencer=False, local_path_roots=roots
    ) as queues:
        yield TrainEnv(
            client=client,
            queue=queues.training,
            runs_root=runs_root,
            context=Context(tiny_model, sentiment_csv, artefacts, good_run_id="unused"),
            cli_env=cli_env(
                client.service_client.config.target_host,
                queues.training,
                "unused-inference-queue",
                runs_root,
            ),
        )


def _assert_contained(env: TrainEnv, before_outside: set[str], before_parent: set[str]) -> None:
    assert snapshot(env.context.bad.outside) == before_outside, "wrote outside BERT_RUNS_DIR"
    assert snapshot(env.runs_root.parent) == before_parent, "left files around the runs root"
    assert list(env.runs_root.iterdir()) == [], "left a (partial) run directory"


@pytest.mark.parametrize("case", cases("train"), ids=lambda c: c.id)
async def test_bad_training_input_fails_fast_and_clearly(train_env: TrainEnv, case: Case) -> None:
    before_outside = snapshot(train_env.context.bad.outside)
    before_parent = snapshot(train_env.runs_root.parent)
    outcome = await expect_failure(
        train_env.client, FINE_TUNING_WORKFLOW, train_env.queue, case.build(train_env.context)
    )
    check_outcome(case, outcome)
    _assert_contained(train_env, before_outside, before_parent)
    assert not (train_env.context.bad.outside / "REMOTE_CODE_RAN").exists()


def _cli_args(case: Case, context: Context, directory: Path) -> list[str]:
    value = case.build(context)
    path = directory / f"{case.id}.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    return ["train", str(path), "--workflow-id", f"cli-{case.id}-{uuid.uuid4()}"]


async def test_bad_training_input_through_the_cli(train_env: TrainEnv, tmp_path: Path) -> None:
    """``bert-finetune train FILE`` prints one line per case, naming the field, and exits 1."""
    for case in cases("train"):
        args = _cli_args(case, train_env.context, tmp_path)
        check_cli_failure(case, await run_cli_in_process(args, train_env.cli_env))
    assert list(train_env.runs_root.iterdir()) == []


async def test_bad_training_input_through_the_cli_process(
    train_env: TrainEnv, tmp_path: Path
) -> None:
    """The real entry point (``python -m bert_finetune.cli``): no traceback, exit code 1."""
    sample = one_case_per_area(cases("train"))
    commands = [
        run_cli(_cli_args(case, train_env.context, tmp_path), train_env.cli_env, tmp_path)
        for case in sample
    ]
    for case, result in zip(sample, await gather_limited(commands, limit=4), strict=True):
        check_cli_failure(case, result)
        assert result.returncode == 1


async def test_worker_survives_the_table_and_reports_clamped_samples(
    train_env: TrainEnv,
) -> None:
    """After every bad case the same worker trains; an oversized sample limit is clamped."""
    context = train_env.context
    config = tiny_config(context.tiny_model, context.data, num_epochs=1, max_train_samples=100_000)
    output = await train_env.client.execute_workflow(
        FINE_TUNING_WORKFLOW,
        {"experiment_name": "after-the-table", "runs": [config]},
        id=f"after-the-table-{uuid.uuid4()}",
        task_queue=train_env.queue,
        result_type=BertExperimentOutput,
    )
    run = output.runs[0]
    assert run.num_train_samples == 160
    assert run.notes == ["max_train_samples=100000 is more than the 160 rows available; used all"]
    assert Path(run.model_dir).parent == train_env.runs_root.resolve()


async def test_rerunning_an_experiment_never_corrupts_a_finished_run(
    train_env: TrainEnv, tmp_path: Path
) -> None:
    """Same config and data: reused. Different config or data: refused unless overwrite."""
    context = train_env.context
    train_file = context.bad.root / "rerun-train.csv"  # inside the trainer's roots
    train_file.write_bytes(context.data.train.read_bytes())
    config = tiny_config(context.tiny_model, context.data, num_epochs=1, train_file=str(train_file))

    async def run(config: dict, **top: object) -> BertExperimentOutput:
        return await train_env.client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            {"experiment_name": "rerun", "runs": [config], **top},
            id=f"rerun-{uuid.uuid4()}",
            task_queue=train_env.queue,
            result_type=BertExperimentOutput,
        )

    first = (await run(config)).runs[0]
    run_dir = Path(first.model_dir)
    manifest = run_dir / "run.json"
    finished = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}

    again = (await run(config)).runs[0]
    assert again.reused and again.train_loss == first.train_loss

    changed = {**config, "learning_rate": 0.001}
    refused = await expect_failure(
        train_env.client,
        FINE_TUNING_WORKFLOW,
        train_env.queue,
        {"experiment_name": "rerun", "runs": [changed]},
    )
    assert refused.error.type == "InvalidConfig"
    assert "different config" in refused.error.message and "overwrite" in refused.error.message

    train_file.write_text(train_file.read_text() + "a good good film,positive\n")
    refused = await expect_failure(
        train_env.client,
        FINE_TUNING_WORKFLOW,
        train_env.queue,
        {"experiment_name": "rerun", "runs": [config]},
    )
    assert "different data" in refused.error.message
    # Neither refusal touched the finished run.
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == finished

    replaced = (await run(changed, overwrite=True)).runs[0]
    assert not replaced.reused
    # The new commit's export (after the commit, in its own workflow) stages there too.
    assert (await wait_for_export(train_env.client, replaced.run_id)).outcome == "exported"
    assert json.loads(manifest.read_text())["config"]["learning_rate"] == 0.001
    assert not (run_dir / "checkpoints").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "staging left behind"
    assert not (train_env.runs_root / STAGING_DIR).exists(), "staging left behind"
