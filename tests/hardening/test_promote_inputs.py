"""Every bad promotion, through a real server and a controller worker (no trainer at all).

Also: the same cases through ``bert-finetune promote``, one through the ``temporal`` CLI,
and proof that a refused promotion leaves the alias where it was.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from services.trainer.worker import build_trainer_worker
from shared import aliases
from shared.runs import RUN_MANIFEST
from shared.types import PROMOTE_WORKFLOW
from tests.conftest import SentimentData, temporal_cli
from tests.hardening.artefacts import Artefacts
from tests.hardening.cases import (
    CASES_BY_ID,
    INCOMPLETE_RUN_ID,
    SYMLINK_RUN_ID,
    Case,
    Context,
    cases,
)
from tests.hardening.conftest import TrainedRun, copy_run
from tests.hardening.support import (
    check_cli_failure,
    check_outcome,
    cli_env,
    expect_failure,
    run_cli_in_process,
    snapshot,
)

GOOD_RUN_ID = "good-run"
ALIAS = "production"


@dataclass(frozen=True)
class PromoteEnv:
    client: Client
    queue: str
    runs_root: Path
    context: Context
    cli_env: dict


@pytest_asyncio.fixture(scope="module")
async def promote_env(
    temporal_env: WorkflowEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    artefacts: Artefacts,
    trained_run: TrainedRun,
) -> AsyncIterator[PromoteEnv]:
    runs_root = tmp_path_factory.mktemp("hardening_promote") / "bert_runs"
    runs_root.mkdir()
    copy_run(trained_run.run_dir, runs_root, GOOD_RUN_ID)
    (copy_run(trained_run.run_dir, runs_root, INCOMPLETE_RUN_ID) / RUN_MANIFEST).unlink()
    stolen = copy_run(trained_run.run_dir, artefacts.outside.parent, "stolen-promote-run")
    (runs_root / SYMLINK_RUN_ID).symlink_to(stolen, target_is_directory=True)
    # The alias already serves the good run: no refused promotion may move or remove it.
    aliases.promote(runs_root, GOOD_RUN_ID, ALIAS)
    client = temporal_env.client
    queue = f"promote-{uuid.uuid4()}"
    controller = build_trainer_worker(
        client,
        task_queue=queue,
        runs_root=runs_root,
        graceful_shutdown=timedelta(seconds=5),
        no_remote_activities=True,
    )
    async with controller:
        yield PromoteEnv(
            client=client,
            queue=queue,
            runs_root=runs_root,
            context=Context(tiny_model, sentiment_csv, artefacts, good_run_id=GOOD_RUN_ID),
            cli_env=cli_env(client.service_client.config.target_host, queue, "unused", runs_root),
        )


def _unchanged(env: PromoteEnv, before: set[str]) -> None:
    assert snapshot(env.runs_root) == before
    assert aliases.list_aliases(env.runs_root) == {ALIAS: GOOD_RUN_ID}


@pytest.mark.parametrize("case", cases("promote"), ids=lambda c: c.id)
async def test_bad_promotion_fails_fast_and_clearly(promote_env: PromoteEnv, case: Case) -> None:
    before = snapshot(promote_env.runs_root)
    outcome = await expect_failure(
        promote_env.client, PROMOTE_WORKFLOW, promote_env.queue, case.build(promote_env.context)
    )
    check_outcome(case, outcome)
    _unchanged(promote_env, before)


async def test_bad_promotion_through_the_cli(promote_env: PromoteEnv) -> None:
    before = snapshot(promote_env.runs_root)
    for case in [c for c in cases("promote") if c.cli]:
        request = case.build(promote_env.context)
        result = await run_cli_in_process(
            ["promote", request["run_id"], request["alias"]], promote_env.cli_env
        )
        check_cli_failure(case, result)
    _unchanged(promote_env, before)


async def test_bad_promotion_through_the_temporal_cli(promote_env: PromoteEnv) -> None:
    case = CASES_BY_ID["promote-alias-underscore"]
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        "workflow",
        "execute",
        "--address",
        promote_env.cli_env["TEMPORAL_ADDRESS"],
        "--type",
        PROMOTE_WORKFLOW,
        "--task-queue",
        promote_env.queue,
        "--workflow-id",
        f"temporal-cli-{case.id}-{uuid.uuid4()}",
        "--input",
        json.dumps(case.build(promote_env.context)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    text = output.decode()
    assert process.returncode != 0 and "FAILED" in text, text
    for fragment in case.expect:
        assert fragment in text, f"{fragment!r} not in {text}"
