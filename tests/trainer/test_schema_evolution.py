"""Run folders written by the first-round code (tests/fixtures/legacy_v1) keep working.

A deploy that adds defaulted config fields must neither retrain (nor refuse) finished runs
nor restart in-flight ones from step 0. The one field whose default changed what training does,
``group_by_length`` (true), counts as false for runs trained before it: such a run serves the
config that says so, and a config asking for grouping is refused by name, not silently reused.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bert_finetune.cli import main as cli_main
from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from shared.run_record import RunRecord
from shared.runs import read_record
from shared.types import (
    FINE_TUNING_WORKFLOW,
    INFERENCE_WORKFLOW,
    BertExperimentInput,
    BertExperimentOutput,
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertInferenceRequest,
    BertInferenceResult,
)
from tests.conftest import TEST_LOCAL_PATH_ROOTS, running_workers
from tests.helpers.gateway import OfflineGateway

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1"
FINISHED = "legacy-run-0-tiny-bert"
PARTIAL = "legacy-run-1-tiny-bert"


@pytest.fixture
def legacy_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the fixture as the working directory (its configs use relative paths)."""
    workspace = tmp_path / "legacy"
    shutil.copytree(FIXTURE, workspace)
    monkeypatch.chdir(workspace)
    return workspace / "runs"


def _legacy_config(runs_root: Path, run_id: str = FINISHED) -> dict:
    """The config exactly as the first round stored it (no weight_decay / warmup_ratio)."""
    return json.loads((runs_root / run_id / "run.json").read_text())["config"]


def _new_format(config: dict) -> BertFineTuneConfig:
    """The same config as today's clients send it: every new field at its default, except
    ``group_by_length``, which runs trained before it existed did without."""
    return BertFineTuneConfig.model_validate(
        {**config, "weight_decay": 0.0, "warmup_ratio": 0.0, "group_by_length": False}
    )


def _fine_tune(runs_root: Path, run_id: str, config: BertFineTuneConfig):
    env = ActivityEnvironment()
    return env.run(
        TrainingActivities(
            runs_root, OfflineGateway(), local_path_roots=LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
        ).fine_tune_bert,
        BertFineTuneRequest(run_id=run_id, config=config),
    )


def test_a_finished_legacy_run_is_reused_by_the_same_config_in_the_new_format(
    legacy_runs: Path,
) -> None:
    record_bytes = (legacy_runs / FINISHED / "run.json").read_bytes()
    legacy = RunRecord.from_json(record_bytes)
    result = _fine_tune(legacy_runs, FINISHED, _new_format(_legacy_config(legacy_runs)))
    assert result.reused and result.reused_from is None
    assert result.train_loss == legacy.result.train_loss
    assert result.epochs_completed == 2
    assert Path(result.model_dir) == (legacy_runs / FINISHED).resolve()
    assert (legacy_runs / FINISHED / "run.json").read_bytes() == record_bytes, "not rewritten"
    assert not (legacy_runs / FINISHED / "checkpoints").exists(), "nothing was trained"


def test_a_legacy_run_asked_for_with_grouped_batches_is_refused_naming_the_field(
    legacy_runs: Path,
) -> None:
    grouped = BertFineTuneConfig.model_validate(_legacy_config(legacy_runs))
    assert grouped.group_by_length  # today's default
    with pytest.raises(ApplicationError) as refused:
        _fine_tune(legacy_runs, FINISHED, grouped)
    assert refused.value.type == "InvalidConfig"
    assert "group_by_length" in refused.value.message
    assert "overwrite" in refused.value.message


def test_a_legacy_checkpoint_is_resumed_not_restarted(legacy_runs: Path) -> None:
    # The partial run's config: the finished one's with num_epochs 3.
    config = _new_format({**_legacy_config(legacy_runs, FINISHED), "num_epochs": 3})
    result = _fine_tune(legacy_runs, PARTIAL, config)
    assert not result.reused
    assert result.resumed_from_step == 13
    record = read_record(legacy_runs / PARTIAL)
    assert record.schema_version >= 2 and record.global_step == 30
    assert not (legacy_runs / PARTIAL / "checkpoints").exists()


async def test_a_legacy_run_is_reused_served_and_listed(
    client: Client, legacy_runs: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "legacy",
            "runs": [{**_legacy_config(legacy_runs), "group_by_length": False}],
        }
    )
    async with running_workers(client, legacy_runs) as queues:
        output = await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id=f"legacy-{uuid.uuid4()}",
            task_queue=queues.training,
            result_type=BertExperimentOutput,
        )
        (run,) = output.runs
        assert run.run_id == FINISHED and run.reused
        served = await client.execute_workflow(
            INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id=FINISHED, texts=["the movie was great", "awful"]),
            id=f"legacy-infer-{uuid.uuid4()}",
            task_queue=queues.inference,
            result_type=BertInferenceResult,
        )
    assert served.run_id == FINISHED and len(served.labels) == 2
    assert set(served.label_names) <= {"negative", "positive"}

    monkeypatch.setenv("BERT_RUNS_DIR", str(legacy_runs))
    assert cli_main(["runs", "--json"]) == 0
    listed = {run["run_id"]: run for run in json.loads(capsys.readouterr().out)}
    assert listed[FINISHED]["complete"] and listed[FINISHED]["record"]["schema_version"] == 1
    assert not listed[PARTIAL]["complete"]
