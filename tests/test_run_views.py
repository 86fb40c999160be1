"""`bert-finetune runs` and `runs show RUN_ID` read run records: metrics, history, matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bert_finetune.cli import main as cli_main
from shared.run_record import EpochEvaluation
from shared.runs import write_record
from tests.helpers.runs import sample_record


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BERT_RUNS_DIR", str(tmp_path))
    record = sample_record("shown-run-0-tiny", ["negative", "positive"], num_epochs=3)
    metrics = {"eval_accuracy": 0.875, "eval_f1_macro": 0.86, "eval_loss": 0.31}
    record = record.model_copy(
        update={
            "result": record.result.model_copy(update={"eval_metrics": metrics}),
            "epochs_completed": 2,
            "stopped_early": True,
            "eval_history": [
                EpochEvaluation(epoch=1, global_step=10, metrics={"eval_accuracy": 0.625}),
                EpochEvaluation(epoch=2, global_step=20, metrics=metrics),
            ],
            "confusion_matrix": [[17, 3], [2, 18]],
        }
    )
    (tmp_path / record.run_id).mkdir()
    write_record(tmp_path / record.run_id, record)
    (tmp_path / "_aliases").mkdir()
    (tmp_path / "partial-run-0-tiny").mkdir()
    return tmp_path


def test_runs_show_prints_metrics_history_and_confusion_matrix(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["runs", "show", "shown-run-0-tiny"]) == 0
    out = capsys.readouterr().out
    assert "2 of 3 (stopped early)" in out
    assert "eval_f1_macro" in out and "0.8600" in out
    assert "Evaluation by epoch" in out and "0.6250" in out
    assert "Confusion matrix" in out and "17" in out and "18" in out


def test_runs_lists_runs_only_and_show_refuses_unknown_or_partial_runs(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["runs", "--json"]) == 0
    listed = {run["run_id"]: run for run in json.loads(capsys.readouterr().out)}
    assert sorted(listed) == ["partial-run-0-tiny", "shown-run-0-tiny"]
    assert listed["shown-run-0-tiny"]["record"]["result"]["eval_metrics"]["eval_f1_macro"] == 0.86
    for missing, reason in (
        ("nothing-here", "does not exist"),
        ("partial-run-0-tiny", "incomplete"),
    ):
        assert cli_main(["runs", "show", missing]) == 1
        error = capsys.readouterr().err
        assert reason in error and "Traceback" not in error
