"""Successive-halving segments (pause, continue, finish) and reuse across run ids, with the
tiny BERT and real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from services.inferencer.model_cache import load_model
from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder import checkpoints
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.training.callbacks import EVALUATION_MATRIX_FILE, read_evaluation_matrix
from services.trainer.training.evaluation import ClassificationMetrics
from services.trainer.training.stages import TrainingSession
from shared import metrics
from shared.manifests import CheckpointManifest
from shared.runs import is_complete, read_confusion_matrix, read_record, resolve_served_run
from shared.types import BertFineTuneConfig, BertFineTuneRequest, BertFineTuneResult
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway

STEPS_PER_EPOCH = 10  # 160 rows at batch size 16


def _train(runs_root: Path, run_id: str, config: dict, **request: object) -> BertFineTuneResult:
    return ActivityEnvironment().run(
        TrainingActivities(
            runs_root, OfflineGateway(), local_path_roots=LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
        ).fine_tune_bert,
        BertFineTuneRequest(
            run_id=run_id, config=BertFineTuneConfig.model_validate(config), **request
        ),
    )


def test_pause_continue_and_finish_at_a_rung(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=4)
    run_dir = runs_root / "halving-run-0-tiny"

    first = _train(runs_root, "halving-run-0-tiny", config, pause_at_epoch=1)
    assert first.paused and first.epochs_completed == 1 and not first.stopped_early
    assert set(first.eval_metrics) >= {"eval_accuracy", "eval_f1_macro", "eval_loss"}
    assert not is_complete(run_dir), "a paused run is not committed"
    assert [p.name for p in checkpoints.sealed_checkpoints(run_dir)] == ["checkpoint-10"]

    second = _train(runs_root, "halving-run-0-tiny", config, pause_at_epoch=2, attempt_offset=5)
    assert second.paused and second.epochs_completed == 2
    assert second.resumed_from_step == STEPS_PER_EPOCH, "continued, not restarted"
    (sealed,) = checkpoints.sealed_checkpoints(run_dir)[:1]
    assert sealed.name == "checkpoint-20"
    weights_at_rung = load_file(sealed / "model.safetensors")
    shutil.copytree(sealed, tmp_path / "rung-2")

    pruned = _train(runs_root, "halving-run-0-tiny", config, finish_at_epoch=2, attempt_offset=10)
    assert not pruned.paused and pruned.stopped_early and pruned.epochs_completed == 2
    assert pruned.resumed_from_step == 2 * STEPS_PER_EPOCH
    assert pruned.eval_metrics == second.eval_metrics, "the model as of the end of epoch 2"
    committed = load_file(run_dir / "model.safetensors")
    assert all((committed[name] == weights_at_rung[name]).all() for name in weights_at_rung)

    record = read_record(run_dir)
    assert record.stopped_early and record.epochs_completed == 2 and record.global_step == 20
    assert [entry.epoch for entry in record.eval_history] == [1, 2]
    assert record.confusion_matrix is None, "the matrix has a file of its own"
    matrix = read_confusion_matrix(run_dir, record)
    assert matrix is not None and sum(map(sum, matrix)) == pruned.num_eval_samples == 40
    assert not (run_dir / "checkpoints").exists()

    # A pruned run stands in for its own epochs only, never for more.
    again = _train(runs_root, "renamed-run-0-tiny", config, finish_at_epoch=2)
    assert again.reused and again.reused_from == "halving-run-0-tiny"
    with pytest.raises(ApplicationError) as refused:
        _train(runs_root, "halving-run-0-tiny", config)
    assert refused.value.type == "InvalidConfig" and "stopped early" in refused.value.message
    full = _train(runs_root, "full-run-0-tiny", config)
    assert not full.reused and full.epochs_completed == 4 and not full.stopped_early


def test_the_same_work_under_another_name_reuses_the_model_without_copying_it(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=2)
    source = _train(runs_root, "first-run-0-tiny", config)
    # Only the experiment name (hence the run id) and where it runs differ.
    reused = _train(runs_root, "second-run-0-tiny", {**config, "use_gpu": True})
    assert reused.reused and reused.reused_from == "first-run-0-tiny"
    assert reused.run_id == "second-run-0-tiny"
    assert reused.eval_metrics == source.eval_metrics
    pointer_dir = runs_root / "second-run-0-tiny"
    assert sorted(p.name for p in pointer_dir.iterdir()) == ["run.json"], "no weights copied"

    served = resolve_served_run(runs_root, "second-run-0-tiny")
    assert served.model_dir == (runs_root / "first-run-0-tiny").resolve()
    loaded = load_model(served.model_dir, "cpu")
    assert loaded.label_names == source.label_names
    labels, _ = loaded.classifier.classify(
        ["the movie was great fun", "awful"], 32, 8, lambda done, size: None
    )
    assert len(labels) == 2

    # Overwriting the source never silently changes what the reusing run serves.
    _train(runs_root, "first-run-0-tiny", {**config, "seed": 7}, overwrite=True)
    with pytest.raises(ApplicationError) as refused:
        resolve_served_run(runs_root, "second-run-0-tiny")
    assert refused.value.type == "RunNotFound" and "first-run-0-tiny" in refused.value.message
    # Asked again, the reusing run does the work itself (its source no longer holds it).
    retrained = _train(runs_root, "second-run-0-tiny", config)
    assert not retrained.reused and retrained.reused_from is None
    assert resolve_served_run(runs_root, "second-run-0-tiny").model_dir == pointer_dir.resolve()


def test_a_segment_never_trains_past_its_pause_epoch_whatever_it_resumes_from(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    """A segment lost after sealing its pause checkpoint is retried: the retry resumes at
    the pause epoch and reports that epoch's evaluation without training a step."""
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=4)
    run_id = "guard-run-0-tiny"
    run_dir = runs_root / run_id
    paused = _train(runs_root, run_id, config, pause_at_epoch=1)
    assert paused.paused and paused.resumed_from_step is None

    # The retry of that segment (attempt 2) finds the pause checkpoint of attempt 1.
    retried = _train(runs_root, run_id, config, pause_at_epoch=1, attempt_offset=1)
    assert retried.paused and retried.epochs_completed == 1
    assert retried.resumed_from_step == STEPS_PER_EPOCH
    assert retried.eval_metrics == paused.eval_metrics, "the evaluation at the end of epoch 1"
    assert [p.name for p in checkpoints.sealed_checkpoints(run_dir)] == ["checkpoint-10"]

    # Even from a checkpoint past the pause epoch (the next rung's), a segment asked to
    # pause at epoch 1 trains nothing and reports epoch 1's evaluation, as logged then.
    later = _train(runs_root, run_id, config, pause_at_epoch=2, attempt_offset=5)
    assert later.epochs_completed == 2 and later.eval_metrics != paused.eval_metrics
    again = _train(runs_root, run_id, config, pause_at_epoch=1, attempt_offset=10)
    assert again.paused and again.epochs_completed == 1
    assert again.resumed_from_step == 2 * STEPS_PER_EPOCH
    assert again.eval_metrics == paused.eval_metrics
    assert checkpoints.sealed_checkpoints(run_dir)[0].name == "checkpoint-20", "none newer"


def test_a_checkpoint_due_at_an_epochs_end_is_saved_once_with_the_epochs_evaluation(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    """A checkpoint schedule that falls on an epoch's last step saves after the epoch's
    evaluation, once: an attempt lost between a save and the evaluation would otherwise
    leave a checkpoint at the epoch's end without it, and the attempt resuming from it
    would train on (or report the rung) with that epoch missing from the run's history."""
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=3, checkpoint_steps=5)
    run_id = "epoch-end-run-0-tiny"
    saves = metrics.CHECKPOINTS._value.get()
    paused = _train(runs_root, run_id, config, pause_at_epoch=1)
    assert paused.paused
    assert metrics.CHECKPOINTS._value.get() - saves == 2, "steps 5 and 10, each saved once"
    (sealed,) = checkpoints.sealed_checkpoints(runs_root / run_id)[:1]
    state = json.loads((sealed / "trainer_state.json").read_text(encoding="utf-8"))
    assert sealed.name == "checkpoint-10"
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [STEPS_PER_EPOCH]

    finished = _train(runs_root, run_id, config, attempt_offset=5)
    assert finished.resumed_from_step == STEPS_PER_EPOCH
    record = read_record(runs_root / run_id)
    assert [(e.epoch, e.global_step) for e in record.eval_history] == [
        (epoch, epoch * STEPS_PER_EPOCH) for epoch in (1, 2, 3)
    ]


@pytest.mark.parametrize("matrix_in_checkpoint", [True, False])
def test_a_pruned_trial_commits_its_rung_evaluation_without_evaluating_again(
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    matrix_in_checkpoint: bool,
) -> None:
    """The rung's checkpoint carries its evaluation's confusion matrix, so the pruned
    trial's commit (a new activity, resuming with nothing left to train) reuses it instead
    of running the model over the evaluation data again. A checkpoint without it (sealed
    by an older trainer) is evaluated again, as before."""
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=3)
    run_id = "matrix-run-0-tiny"
    paused = _train(runs_root, run_id, config, pause_at_epoch=1)
    (sealed,) = checkpoints.sealed_checkpoints(runs_root / run_id)[:1]
    saved = json.loads((sealed / EVALUATION_MATRIX_FILE).read_text(encoding="utf-8"))
    assert saved["step"] == STEPS_PER_EPOCH
    assert sum(map(sum, saved["confusion_matrix"])) == paused.num_eval_samples == 40
    if not matrix_in_checkpoint:
        manifest = CheckpointManifest.read(sealed / checkpoints.MANIFEST_NAME)
        (sealed / EVALUATION_MATRIX_FILE).unlink()
        checkpoints.write_manifest(sealed, manifest.step, manifest.attempt, manifest.config_digest)

    evaluations: list[int] = []
    evaluate_with = TrainingSession._evaluate_with

    def counted(session: TrainingSession, batch: object) -> None:
        evaluations.append(session.trainer.state.global_step)
        evaluate_with(session, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(TrainingSession, "_evaluate_with", counted)
    pruned = _train(runs_root, run_id, config, finish_at_epoch=1, attempt_offset=5)
    assert pruned.stopped_early and pruned.resumed_from_step == STEPS_PER_EPOCH
    assert evaluations == ([] if matrix_in_checkpoint else [STEPS_PER_EPOCH])
    assert pruned.eval_metrics == paused.eval_metrics
    record = read_record(runs_root / run_id)
    assert [entry.epoch for entry in record.eval_history] == [1]
    assert read_confusion_matrix(runs_root / run_id, record) == saved["confusion_matrix"]


def test_a_checkpoint_matrix_is_used_only_when_it_is_the_steps_and_well_formed(
    tmp_path: Path,
) -> None:
    def saved(payload: object) -> Path:
        (tmp_path / EVALUATION_MATRIX_FILE).write_text(json.dumps(payload), encoding="utf-8")
        return tmp_path

    assert read_evaluation_matrix(tmp_path, 10) is None, "no file"
    good = {"step": 10, "confusion_matrix": [[3, 1], [0, 4]]}
    assert read_evaluation_matrix(saved(good), 10) == [[3, 1], [0, 4]]
    assert read_evaluation_matrix(saved(good), 20) is None, "another step's"
    for bad in (
        [1, 2],
        {"step": 10, "confusion_matrix": "3 1 0 4"},
        {"step": 10, "confusion_matrix": [[3, -1], [0, 4]]},
        {"step": 10, "confusion_matrix": [[3, 1.5], [0, 4]]},
    ):
        assert read_evaluation_matrix(saved(bad), 10) is None, bad
    (tmp_path / EVALUATION_MATRIX_FILE).write_text("{not json", encoding="utf-8")
    assert read_evaluation_matrix(tmp_path, 10) is None
    metrics_of_two = ClassificationMetrics(2)
    assert not metrics_of_two.restore([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert metrics_of_two.confusion_matrix is None
    assert metrics_of_two.restore([[3, 1], [0, 4]])
    assert metrics_of_two.confusion_matrix == [[3, 1], [0, 4]]
