"""Each Trainer callback on its own, driven with the Trainer's real state and control objects."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from temporalio.testing import ActivityEnvironment
from transformers import TrainerControl, TrainerState

from services.trainer.activities.progress import ProgressReporter
from services.trainer.run_folder import checkpoints
from services.trainer.run_folder.fencing import AttemptToken
from services.trainer.run_folder.run_directory import RunDirectory
from services.trainer.training import callbacks
from services.trainer.training.stopping import StopControl
from shared import metrics
from shared.types import TrainingProgress

ARGS = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=1)


def state(step: int = 0, max_steps: int = 100, epoch: float = 0.0) -> TrainerState:
    return TrainerState(global_step=step, max_steps=max_steps, epoch=epoch)


def reporter() -> ProgressReporter:
    return ProgressReporter(TrainingProgress(run_id="r"))


def test_metrics_callback_counts_steps_and_samples_since_the_last_call() -> None:
    callback = callbacks.MetricsCallback()
    steps, samples = metrics.STEPS._value.get(), metrics.SAMPLES._value.get()
    callback.on_train_begin(ARGS, state(step=10), TrainerControl())
    callback.on_step_end(ARGS, state(step=13), TrainerControl())
    assert metrics.STEPS._value.get() - steps == 3
    assert metrics.SAMPLES._value.get() - samples == 3 * 4 * 2
    callback.on_log(ARGS, state(step=13), TrainerControl(), logs={"loss": 0.25})
    assert metrics.TRAINING_LOSS._value.get() == 0.25


def test_progress_callback_reports_phase_step_epoch_loss_and_accuracy() -> None:
    progress = reporter()
    callback = callbacks.ProgressCallback(progress)
    callback.on_train_begin(ARGS, state(step=5, max_steps=40), TrainerControl())
    assert progress.progress.phase == "training" and progress.progress.max_steps == 40
    callback.on_step_end(ARGS, state(step=6, epoch=0.15), TrainerControl())
    callback.on_log(ARGS, state(step=6), TrainerControl(), logs={"loss": 0.5})
    callback.on_evaluate(ARGS, state(step=6), TrainerControl(), metrics={"eval_accuracy": 0.75})
    seen = progress.progress
    assert (seen.global_step, seen.epoch, seen.loss, seen.eval_accuracy) == (6, 0.15, 0.5, 0.75)


def test_stop_callback_cancel_stops_without_saving() -> None:
    stop = StopControl(lambda: True, lambda: False)
    control = TrainerControl()
    callbacks.StopCallback(stop).on_step_end(ARGS, state(step=3), control)
    assert control.should_training_stop and not control.should_save
    assert stop.cancelled


def test_stop_callback_shutdown_saves_once_then_stops() -> None:
    stop = StopControl(lambda: False, lambda: True)
    callback = callbacks.StopCallback(stop)
    control = TrainerControl()
    callback.on_step_end(ARGS, state(step=7), control)
    assert control.should_save and control.should_training_stop
    assert stop.interrupted_at_step == 7
    again = TrainerControl()
    callback.on_step_end(ARGS, state(step=8), again)
    assert not again.should_save, "one checkpoint per shutdown"


def test_epoch_stop_callback_stops_and_evaluates_at_its_epoch_and_seals_for_a_pause() -> None:
    early, at = TrainerControl(), TrainerControl()
    pause = callbacks.EpochStopCallback(2, seal=True)
    pause.on_epoch_end(ARGS, state(epoch=1.0), early)
    pause.on_epoch_end(ARGS, state(epoch=2.0), at)
    assert not early.should_training_stop
    assert at.should_training_stop and at.should_evaluate and at.should_save
    finish = TrainerControl()
    callbacks.EpochStopCallback(2, seal=False).on_epoch_end(ARGS, state(epoch=2.0), finish)
    assert finish.should_training_stop and not finish.should_save


def test_epoch_evaluation_callback_skips_the_last_epoch_and_stops() -> None:
    middle, last = TrainerControl(), TrainerControl()
    callback = callbacks.EpochEvaluationCallback()
    callback.on_epoch_end(ARGS, state(step=50, max_steps=100), middle)
    callback.on_epoch_end(ARGS, state(step=100, max_steps=100), last)
    assert middle.should_evaluate and not last.should_evaluate
    stopping = TrainerControl(should_training_stop=True)  # a preemption ended the epoch loop
    callback.on_epoch_end(ARGS, state(step=30, max_steps=100), stopping)
    assert not stopping.should_evaluate


def test_a_checkpoint_at_an_epochs_last_step_waits_for_the_epochs_evaluation() -> None:
    callback = callbacks.EpochEndCheckpointCallback()
    mid_epoch = TrainerControl(should_save=True)
    callback.on_step_end(ARGS, state(step=15, max_steps=60, epoch=0.75), mid_epoch)
    assert mid_epoch.should_save, "a save inside an epoch is not moved"
    at_end = TrainerControl(should_save=True)
    callback.on_step_end(ARGS, state(step=20, max_steps=60, epoch=1.0), at_end)
    assert not at_end.should_save
    callback.on_epoch_end(ARGS, state(step=20, max_steps=60, epoch=1.0), at_end)
    assert at_end.should_evaluate and at_end.should_save, "evaluated, then saved"
    # A preemption at that step still evaluates the epoch it ended before its checkpoint.
    preempted = TrainerControl(should_save=True, should_training_stop=True)
    callback.on_step_end(ARGS, state(step=40, max_steps=60, epoch=2.0), preempted)
    callback.on_epoch_end(ARGS, state(step=40, max_steps=60, epoch=2.0), preempted)
    assert preempted.should_evaluate and preempted.should_save
    # The last step's checkpoint is not moved: the final evaluation runs after training.
    last = TrainerControl(should_save=True)
    callback.on_step_end(ARGS, state(step=60, max_steps=60, epoch=3.0), last)
    assert last.should_save


def test_a_save_that_waited_for_an_evaluation_is_timed_from_the_evaluations_end() -> None:
    now = [0.0]
    callback = callbacks.TimedCheckpointCallback(60, max_cost_fraction=0.05, clock=lambda: now[0])
    callback.on_train_begin(ARGS, state(), TrainerControl())
    now[0] = 61.0
    control = TrainerControl()
    callback.on_step_end(ARGS, state(step=20, epoch=1.0), control)
    now[0] = 81.0  # a 20 s evaluation, then a 1 s save
    callback.on_evaluate(ARGS, state(step=20), control)
    now[0] = 82.0
    callback.on_save(ARGS, state(step=20), control)
    assert callback.interval == 60.0, "the evaluation is not counted as save time"


def test_timed_checkpoints_follow_the_clock_and_stretch_for_slow_saves() -> None:
    now = [0.0]
    callback = callbacks.TimedCheckpointCallback(60, max_cost_fraction=0.05, clock=lambda: now[0])
    callback.on_train_begin(ARGS, state(), TrainerControl())
    now[0] = 59.0
    control = TrainerControl()
    callback.on_step_end(ARGS, state(step=1), control)
    assert not control.should_save
    now[0] = 61.0
    callback.on_step_end(ARGS, state(step=2), control)
    assert control.should_save
    now[0] = 66.0  # the save took 5 s: keeping it under 5% needs 100 s between saves
    callback.on_save(ARGS, state(step=2), control)
    assert callback.interval == 100.0
    now[0] = 66.0 + 99.0
    later = TrainerControl()
    callback.on_step_end(ARGS, state(step=3), later)
    assert not later.should_save


def test_checkpoint_seal_callback_seals_prunes_and_publishes_the_resume_hint(
    tmp_path: Path,
) -> None:
    heartbeats: list[dict] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])
    progress = reporter()
    run = RunDirectory(tmp_path, "seal-run")
    run.claim(None, AttemptToken("workflow", "run", 2), overwrite=False, identity="d")
    seal = callbacks.CheckpointSealCallback(run, attempt=2, config_digest="d", reporter=progress)
    for step in (10, 20, 30):
        path = checkpoints.checkpoint_dir(run.path, 2, step)
        path.mkdir(parents=True)
        (path / "trainer_state.json").write_text("{}")
        env.run(seal.on_save, ARGS, state(step=step), TrainerControl())
    kept = checkpoints.sealed_checkpoints(run.path)
    assert [p.name for p in kept] == ["checkpoint-30", "checkpoint-20"]
    assert checkpoints.verify(kept[0], ["d"]) is not None
    assert progress.progress.latest_checkpoint == str(kept[0])
    assert heartbeats[-1]["latest_checkpoint"] == str(kept[0])
