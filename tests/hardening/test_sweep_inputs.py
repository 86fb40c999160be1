"""Every bad sweep input, through a real server and a real trainer worker, and the CLI.

Each case must fail the sweep within seconds with a non-retryable ``InvalidConfig`` naming
the field, start no trial and leave no run directory. A sweep whose run ids hold another
config's finished runs is refused the same way unless ``overwrite``.
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

from shared.sweep_types import SWEEP_WORKFLOW
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentOutput
from tests.conftest import SentimentData, running_workers, tiny_config
from tests.hardening.artefacts import Artefacts
from tests.hardening.cases import Case, Context, cases
from tests.hardening.support import (
    check_cli_failure,
    check_outcome,
    cli_env,
    expect_failure,
    run_cli_in_process,
)


@dataclass(frozen=True)
class SweepEnv:
    client: Client
    queue: str
    runs_root: Path
    context: Context
    cli_env: dict


@pytest_asyncio.fixture(scope="module")
async def sweep_env(
    temporal_env: WorkflowEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    artefacts: Artefacts,
) -> AsyncIterator[SweepEnv]:
    runs_root = tmp_path_factory.mktemp("hardening_sweep") / "bert_runs"
    runs_root.mkdir()
    client = temporal_env.client
    async with running_workers(client, runs_root, inferencer=False) as queues:
        yield SweepEnv(
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


@pytest.mark.parametrize("case", cases("sweep"), ids=lambda c: c.id)
async def test_bad_sweep_input_fails_fast_and_clearly(sweep_env: SweepEnv, case: Case) -> None:
    outcome = await expect_failure(
        sweep_env.client, SWEEP_WORKFLOW, sweep_env.queue, case.build(sweep_env.context)
    )
    check_outcome(case, outcome)
    assert list(sweep_env.runs_root.iterdir()) == [], "started a trial"


async def test_bad_sweep_input_through_the_cli(sweep_env: SweepEnv, tmp_path: Path) -> None:
    """``bert-finetune sweep FILE`` prints one line per case, naming the field, and exits 1."""
    for case in cases("sweep"):
        path = tmp_path / f"{case.id}.json"
        path.write_text(json.dumps(case.build(sweep_env.context)), encoding="utf-8")
        args = ["sweep", str(path), "--workflow-id", f"cli-{case.id}-{uuid.uuid4()}"]
        check_cli_failure(case, await run_cli_in_process(args, sweep_env.cli_env))
    assert list(sweep_env.runs_root.iterdir()) == []


async def test_a_sweep_name_holding_other_configs_is_refused_unless_overwrite(
    sweep_env: SweepEnv,
) -> None:
    """Sweeps and experiments share run ids: an experiment's finished run is not replaced
    by a sweep trial of another config unless the sweep says ``overwrite``."""
    context = sweep_env.context
    config = tiny_config(context.tiny_model, context.data, num_epochs=1, learning_rate=0.005)
    trained = await sweep_env.client.execute_workflow(
        FINE_TUNING_WORKFLOW,
        {"experiment_name": "shared-name", "runs": [config]},
        id=f"shared-name-{uuid.uuid4()}",
        task_queue=sweep_env.queue,
        result_type=BertExperimentOutput,
    )
    manifest = Path(trained.runs[0].model_dir) / "run.json"
    before = manifest.read_bytes()
    sweep = {
        "sweep_name": "shared-name",
        "base": config,
        "space": {"learning_rate": {"values": [0.001]}},
        "strategy": "grid",
    }
    outcome = await expect_failure(sweep_env.client, SWEEP_WORKFLOW, sweep_env.queue, sweep)
    assert outcome.error.type == "InvalidConfig" and outcome.error.non_retryable
    assert "sweep_name 'shared-name'" in outcome.error.message
    assert trained.runs[0].run_id in outcome.error.message
    assert "overwrite" in outcome.error.message
    assert manifest.read_bytes() == before, "the refusal touched the finished run"

    # The same config is no conflict: the sweep reuses the finished run.
    same = {**sweep, "space": {"learning_rate": {"values": [0.005]}}}
    output = await sweep_env.client.execute_workflow(
        SWEEP_WORKFLOW, same, id=f"shared-same-{uuid.uuid4()}", task_queue=sweep_env.queue
    )
    assert output["best_run_id"] == trained.runs[0].run_id
