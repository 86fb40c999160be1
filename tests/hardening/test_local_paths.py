"""``BERT_LOCAL_PATH_ROOTS`` end to end: a real trainer process reads only inside its roots.

The table in ``cases.py`` covers every way out (a file elsewhere, ``..``, a symlink, a
model folder with a link inside, a local dataset folder) against an in-process worker; this
test checks the setting itself, as an operator sets it, on a worker started like a pod.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from shared.errors import INVALID_CONFIG
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.conftest import SentimentData, tiny_config
from tests.durability.harness import task_queue
from tests.helpers.processes import WorkerProcess


async def _train(client: Client, queue: str, name: str, config: dict) -> BertExperimentOutput:
    return await asyncio.wait_for(
        client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            BertExperimentInput.model_validate({"experiment_name": name, "runs": [config]}),
            id=f"{name}-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        ),
        timeout=180,
    )


async def test_a_trainer_reads_only_inside_its_configured_roots(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
) -> None:
    allowed, elsewhere = tmp_path / "team-a", tmp_path / "team-b"
    allowed.mkdir()
    elsewhere.mkdir()
    data = SentimentData(
        train=Path(shutil.copy(sentiment_csv.train, allowed)),
        validation=Path(shutil.copy(sentiment_csv.validation, allowed)),
    )
    model = Path(shutil.copytree(tiny_model, allowed / "model"))
    other_tenant = Path(shutil.copy(sentiment_csv.train, elsewhere / "private.csv"))
    queue = task_queue()
    worker = WorkerProcess(
        client.service_client.config.target_host,
        queue,
        runs_root,
        tmp_path / "trainer.log",
        extra_env={"BERT_LOCAL_PATH_ROOTS": f"{allowed}:{runs_root}"},
    )
    try:
        with pytest.raises(WorkflowFailureError) as refused:
            await _train(
                client,
                queue,
                "other-tenant",
                tiny_config(model, data, train_file=str(other_tenant)),
            )
        error = refused.value.cause
        assert isinstance(error, ApplicationError) and error.type == INVALID_CONFIG
        assert "train_file" in error.message and str(allowed) in error.message
        assert "BERT_LOCAL_PATH_ROOTS" in error.message
        assert list(runs_root.iterdir()) == []

        output = await _train(client, queue, "own-data", tiny_config(model, data, num_epochs=2))
        assert output.runs[0].num_train_samples == 160
    finally:
        worker.stop()
