"""`bert-finetune runs` and `runs show RUN_ID` read run records: metrics, history, matrix,
and each run's ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bert_finetune.cli import main as cli_main
from shared.manifests import ExportManifest
from shared.onnx_export import (
    CHECK_TEXTS_FILE,
    EXPORT_DIR,
    EXPORT_MANIFEST,
    FP32_GRAPH,
    INT8_GRAPH,
    TOKENIZER_FILE,
    write_check_texts,
)
from shared.run_record import EpochEvaluation
from shared.runs import commit_digest, read_record, write_confusion_matrix, write_record
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


def test_runs_show_reads_the_confusion_matrix_from_its_own_file(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs committed now keep the matrix out of run.json (read on every inference)."""
    run_dir = runs_dir / "shown-run-0-tiny"
    record = read_record(run_dir).model_copy(update={"confusion_matrix": None})
    write_record(run_dir, record)
    write_confusion_matrix(run_dir, record.label_names, [[31, 2], [4, 29]])
    assert cli_main(["runs", "show", "shown-run-0-tiny"]) == 0
    out = capsys.readouterr().out
    assert "Confusion matrix" in out and "31" in out and "29" in out
    assert cli_main(["runs", "show", "shown-run-0-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confusion_matrix"] == [[31, 2], [4, 29]]


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


def committed(root: Path, run_id: str, **update: object) -> Path:
    """A run folder holding only its record (enough for `runs`: no model is loaded)."""
    record = sample_record(run_id, ["negative", "positive"]).model_copy(update=update)
    (root / run_id).mkdir()
    write_record(root / run_id, record)
    return root / run_id


def add_export(run_dir: Path, served_graph: str, source_commit: str | None) -> None:
    """An export's manifest as ``export_run`` (``source_commit``) or an old commit wrote it."""
    manifest = ExportManifest(
        served_graph=served_graph,
        tokenizer=TOKENIZER_FILE,
        input_names=["input_ids", "attention_mask"],
        label_names=["negative", "positive"],
        source_commit=source_commit,
    )
    (run_dir / EXPORT_DIR).mkdir()
    manifest.write(run_dir / EXPORT_DIR / EXPORT_MANIFEST)


def test_runs_show_the_export_state_of_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The graph served when the run has an export; "pending" when the commit kept the texts
    for an export that has not landed; "none" otherwise."""
    monkeypatch.setenv("BERT_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr("bert_finetune.cli.console", Console(width=200))  # no squeezed cells
    exported = committed(tmp_path, "exported-run")
    add_export(exported, INT8_GRAPH, commit_digest(exported))
    # Exported inside the commit by workflows that predate BertExportWorkflow: no source_commit.
    add_export(committed(tmp_path, "old-run"), FP32_GRAPH, None)
    write_check_texts(committed(tmp_path, "pending-run"), ["a text"])
    # Copied under a new id (its run.json rewritten): the export still serves the same model.
    copied = committed(tmp_path, "copied-run")
    add_export(copied, INT8_GRAPH, "0" * 64)
    (copied / CHECK_TEXTS_FILE).write_text('{"texts": []}', encoding="utf-8")
    committed(tmp_path, "plain-run")
    # A run that reused another's model is served, and exported, from that run's folder.
    committed(
        tmp_path, "reusing-run", reused_from="exported-run", source_commit=commit_digest(exported)
    )
    (tmp_path / "partial-run").mkdir()

    assert cli_main(["runs", "--json"]) == 0
    states = {run["run_id"]: run["export"] for run in json.loads(capsys.readouterr().out)}
    assert states == {
        "exported-run": "int8",
        "old-run": "fp32",
        "partial-run": "-",
        "pending-run": "pending",
        "plain-run": "none",
        "reusing-run": "int8",
        "copied-run": "int8",
    }

    assert cli_main(["runs"]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if "run_id" in line)
    assert header.split("┃")[-2].strip() == "export"  # the last column; the others as before
    row = next(line for line in table.splitlines() if "pending-run" in line)
    assert row.split("│")[-2].strip() == "pending"

    for run_id, expected in (
        ("exported-run", "int8 (ONNX Runtime serves onnx/model.int8.onnx)"),
        ("pending-run", "pending (served by PyTorch until the export lands"),
        ("plain-run", "none (served by PyTorch; add one with `bert-finetune export plain-run`)"),
    ):
        assert cli_main(["runs", "show", run_id]) == 0
        assert expected in capsys.readouterr().out
