"""``overwrite: true`` through a real Temporal stack: trainer and inferencer workers, an alias.

The run being overwritten stays complete and served (by run id and by alias) while the
overwrite trains beside it; a cancelled overwrite leaves its files, its export and its
alias exactly as they were; a finished overwrite replaces it in one step (the next request
is answered by the new model); a run whose ``run.json`` cannot be read is replaced only with
``overwrite``, and the refusal says so.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError

from bert_finetune import client_ops
from services.trainer.run_folder.run_directory import STAGING_DIR, TRAINING_FILES
from shared.onnx_export import EXPORT_DIR, is_current_export
from shared.runs import RUN_MANIFEST, read_record
from shared.types import (
    FINE_TUNING_WORKFLOW,
    INFERENCE_WORKFLOW,
    PROMOTE_WORKFLOW,
    BertExperimentInput,
    BertExperimentOutput,
    BertInferenceRequest,
    BertInferenceResult,
    BertPromoteInput,
    BertPromoteOutput,
)
from tests.conftest import SentimentData, running_workers, tiny_config
from tests.durability.harness import long_config, long_run_csv, sealed_checkpoint, wait_for
from tests.helpers.exports import wait_for_export
from tests.tiny import sentiment_rows, write_csv

EXPERIMENT = "overwritten"
TEXTS = ["so great and fun", "awful and sad"]


def _experiment(config: dict, overwrite: bool = False) -> BertExperimentInput:
    return BertExperimentInput.model_validate(
        {"experiment_name": EXPERIMENT, "runs": [config], "overwrite": overwrite}
    )


async def _train(
    client: Client, queue: str, config: dict, overwrite: bool = False
) -> BertExperimentOutput:
    return await asyncio.wait_for(
        client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            _experiment(config, overwrite),
            id=f"{EXPERIMENT}-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        ),
        timeout=300,
    )


async def _infer(client: Client, queue: str, **model: str) -> BertInferenceResult:
    return await client.execute_workflow(
        INFERENCE_WORKFLOW,
        BertInferenceRequest(texts=TEXTS, **model),
        id=f"infer-{uuid.uuid4()}",
        task_queue=queue,
        result_type=BertInferenceResult,
    )


def _tree(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of the run with its size and modification time."""
    return {
        str(path.relative_to(run_dir)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def _upper_case_data(root: Path) -> SentimentData:
    """The same task with upper-case label names: they show which model answered."""

    def upper(rows: list[tuple[str, object]]) -> list[tuple[str, object]]:
        return [(text, str(label).upper()) for text, label in rows]

    return SentimentData(
        train=write_csv(root / "train.csv", upper(sentiment_rows(160, 1, True))),
        validation=write_csv(root / "validation.csv", upper(sentiment_rows(40, 2, True))),
    )


async def test_an_overwrite_keeps_the_old_run_served_until_its_commit_replaces_it(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
) -> None:
    async with running_workers(client, runs_root) as queues:
        (first,) = (
            await _train(client, queues.training, tiny_config(tiny_model, sentiment_csv))
        ).runs
        run_id, run_dir = first.run_id, runs_root / first.run_id
        await wait_for_export(client, run_id)
        await client.execute_workflow(
            PROMOTE_WORKFLOW,
            BertPromoteInput(run_id=run_id, alias="prod"),
            id=f"promote-{uuid.uuid4()}",
            task_queue=queues.training,
            result_type=BertPromoteOutput,
        )
        served = await _infer(client, queues.inference, alias="prod")
        assert served.label_names == ["positive", "negative"]
        before = _tree(run_dir)
        assert any(name.startswith(f"{EXPORT_DIR}/") for name in before), "no export yet"
        pointer = (runs_root / "_aliases" / "prod.json").read_bytes()

        # An overwrite that trains for long: its checkpoints grow beside the complete run.
        train, validation = long_run_csv(tmp_path)
        overwrite = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            _experiment(long_config(tiny_model, train, validation), overwrite=True),
            id=f"{EXPERIMENT}-long-{uuid.uuid4()}",
            task_queue=queues.training,
        )
        await wait_for(lambda: sealed_checkpoint(overwrite), "a checkpoint of the overwrite", 180)
        assert (run_dir / "checkpoints").is_dir()
        committed = {
            n: s for n, s in _tree(run_dir).items() if n.split("/")[0] not in TRAINING_FILES
        }
        assert committed == before, "the old run changed while the overwrite trained"
        # Still served, by alias and by run id, from the very same files.
        assert (await _infer(client, queues.inference, alias="prod")).label_names == [
            "positive",
            "negative",
        ]
        assert (await _infer(client, queues.inference, run_id=run_id)).run_id == run_id

        # Cancelled: the overwrite leaves nothing behind and the old run exactly as it was.
        await overwrite.cancel()
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(overwrite.result(), timeout=60)
        assert _tree(run_dir) == before, "the cancelled overwrite changed the old run"
        assert (runs_root / "_aliases" / "prod.json").read_bytes() == pointer
        staging = runs_root / STAGING_DIR
        assert not staging.exists() or not list(staging.glob(f"{run_id}*"))
        served = await _infer(client, queues.inference, alias="prod")
        assert served.label_names == ["positive", "negative"]

        # A finished overwrite: the next request by alias is answered by the new model.
        upper = _upper_case_data(tmp_path / "upper")
        (second,) = (
            await _train(client, queues.training, tiny_config(tiny_model, upper), overwrite=True)
        ).runs
        assert second.run_id == run_id and not second.reused
        served = await _infer(client, queues.inference, alias="prod")
        assert served.label_names == ["POSITIVE", "NEGATIVE"]
        assert read_record(run_dir).config.train_file == str(upper.train)
        names = {path.name for path in run_dir.iterdir()}
        assert not names & {"checkpoints", ".owner.json", ".replaced", ".swap.json"}
        # The old commit's export went with it; the new commit gets its own.
        export = await wait_for_export(client, run_id)
        assert export.outcome in ("exported", "already_exported")
        assert (run_dir / EXPORT_DIR).is_dir() and is_current_export(run_dir)


async def test_an_unreadable_run_json_is_replaced_only_with_overwrite(
    client: Client, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=2)
    async with running_workers(client, runs_root) as queues:
        (run,) = (await _train(client, queues.training, config)).runs
        run_dir = runs_root / run.run_id
        (run_dir / RUN_MANIFEST).write_text('{"schema_version": 99}', encoding="utf-8")

        with pytest.raises(WorkflowFailureError) as refused:
            await _train(client, queues.training, config)
        message = client_ops.failure_message(refused.value)
        assert message.startswith("[InvalidConfig]") and "cannot be read" in message
        assert "set overwrite: true to replace it" in message and "train it again" not in message

        (replaced,) = (await _train(client, queues.training, config, overwrite=True)).runs
        assert not replaced.reused and read_record(run_dir).run_id == run.run_id
        served = await _infer(client, queues.inference, run_id=run.run_id)
        assert served.run_id == run.run_id
