"""Fixtures for the hardening suite: one trained tiny run, bad artefacts, shared workers."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from shared.runs import RUN_MANIFEST
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.conftest import SentimentData, running_workers, tiny_config
from tests.hardening.artefacts import Artefacts, build_artefacts
from tests.helpers.exports import wait_for_export


@dataclass(frozen=True)
class TrainedRun:
    """A run trained for real once per session; tests copy it under their own runs roots."""

    run_dir: Path
    run_id: str


@pytest_asyncio.fixture(scope="session")
async def trained_run(
    temporal_env: WorkflowEnvironment,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TrainedRun]:
    runs_root = tmp_path_factory.mktemp("trained_runs")
    experiment = BertExperimentInput.model_validate(
        {"experiment_name": "hardening", "runs": [tiny_config(tiny_model, sentiment_csv)]}
    )
    async with running_workers(temporal_env.client, runs_root, inferencer=False) as queues:
        output = await temporal_env.client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id=f"hardening-train-{queues.training}",
            task_queue=queues.training,
            result_type=BertExperimentOutput,
        )
        # The run's ONNX export follows its commit: wait for it, so every user of the
        # fixture sees the same folder.
        await wait_for_export(temporal_env.client, output.runs[0].run_id)
    run = output.runs[0]
    yield TrainedRun(Path(run.model_dir), run.run_id)


def copy_run(source: Path, runs_root: Path, run_id: str) -> Path:
    """A complete copy of a saved run under a new id (as a restore from backup would make)."""
    target = runs_root / run_id
    shutil.copytree(source, target)
    manifest = json.loads((target / RUN_MANIFEST).read_text(encoding="utf-8"))
    manifest["run_id"] = run_id
    (target / RUN_MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return target


@pytest.fixture(scope="session")
def artefacts(
    tiny_model: Path, sentiment_csv: SentimentData, tmp_path_factory: pytest.TempPathFactory
) -> Artefacts:
    return build_artefacts(tmp_path_factory.mktemp("bad"), tiny_model, sentiment_csv)
