"""What the worker adds around ``Trainer``, as small ``TrainerCallback`` classes, one job each.

Each reads the Trainer's ``state`` and sets flags on its ``control``; none patches the Trainer.
``build_callbacks`` lists them in the order they run.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from transformers import TrainerCallback

from services.trainer.run_folder import checkpoints
from services.trainer.run_folder.fencing import Superseded
from services.trainer.run_folder.run_directory import RunDirectory
from services.trainer.training.progress_sink import ProgressSink
from services.trainer.training.stopping import StopControl, TrainingCancelled
from shared import metrics
from shared.logging import get_logger
from shared.tasks import is_minimized
from shared.types import BertFineTuneRequest

if TYPE_CHECKING:
    from services.trainer.distributed.ranks import Ranks
    from services.trainer.tracking.trackers import RunTracking
    from services.trainer.training.stages import Attempt

log = get_logger(__name__)


class MetricsCallback(TrainerCallback):
    """Prometheus counters and gauges: steps, samples, the latest loss."""

    def __init__(self) -> None:
        self._last_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_step = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        steps = state.global_step - self._last_step
        self._last_step = state.global_step
        metrics.STEPS.inc(steps)
        metrics.SAMPLES.inc(
            steps
            * args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * max(1, args.world_size)
        )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            metrics.TRAINING_LOSS.set(float(logs["loss"]))


class ProgressCallback(TrainerCallback):
    """Step, epoch, loss and evaluation into the progress reporter (heartbeats, query)."""

    def __init__(self, reporter: ProgressSink) -> None:
        self._reporter = reporter

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._reporter.update(
            phase="training", global_step=state.global_step, max_steps=state.max_steps
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._reporter.update(global_step=state.global_step, epoch=float(state.epoch or 0))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            self._reporter.update(loss=float(logs["loss"]))

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any
    ) -> None:
        if metrics and "eval_accuracy" in metrics:
            self._reporter.update(eval_accuracy=float(metrics["eval_accuracy"]))


class StopCallback(TrainerCallback):
    """Cancellation and worker shutdown, polled at every step boundary.

    Cancel: stop without saving (the run is discarded). Shutdown (preemption): seal a
    checkpoint at this step, then stop; the next attempt resumes from it.
    """

    def __init__(self, stop: StopControl) -> None:
        self._stop = stop

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._stop.cancel_requested():
            self._stop.cancelled = True
            control.should_training_stop = True
            control.should_save = False
        elif self._stop.shutdown_requested() and self._stop.interrupted_at_step is None:
            self._stop.interrupted_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True


class EpochStopCallback(TrainerCallback):
    """Successive halving: stop at the end of ``stop_at_epoch``, sealing a checkpoint there
    when ``seal`` (a pause resumes from it; a finish commits the model as it is)."""

    def __init__(self, stop_at_epoch: int, seal: bool) -> None:
        self._stop_at_epoch = stop_at_epoch
        self._seal = seal

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if round(state.epoch or 0) >= self._stop_at_epoch:
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = control.should_save or self._seal


class TimedCheckpointCallback(TrainerCallback):
    """The default checkpoint policy: a checkpoint once ``interval_seconds`` have passed since
    the last one, bounding the work a crash can lose by time whatever the step rate.

    Saving costs time, so the interval also grows to keep saves under ``max_cost_fraction``
    of the training time, using the measured duration of the last save (a large model on a
    slow volume checkpoints less often rather than spending its time writing).
    """

    def __init__(
        self,
        interval_seconds: float,
        max_cost_fraction: float = checkpoints.MAX_COST_FRACTION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_interval = interval_seconds
        self._max_cost = max_cost_fraction
        self._clock = clock
        self._last_save = clock()
        self._save_requested_at: float | None = None
        self.interval = interval_seconds

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_save = self._clock()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._clock() - self._last_save >= self.interval:
            control.should_save = True
        if control.should_save:
            self._save_requested_at = self._clock()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A save asked for at an epoch's end waits for its evaluation: that is no save time.
        if self._save_requested_at is not None:
            self._save_requested_at = self._clock()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = self._clock()
        if self._save_requested_at is not None:
            save_seconds = now - self._save_requested_at
            self.interval = max(self._base_interval, save_seconds / self._max_cost)
            self._save_requested_at = None
        self._last_save = now


class FenceCallback(TrainerCallback):
    """Stop when a newer attempt owns the run (see ``fencing``), on the leader.

    The fence is reread every few seconds, and always before the Trainer writes a
    checkpoint, so a stale attempt neither trains on for long nor writes a checkpoint. The
    stop goes through the Trainer's flags (under torchrun every rank agrees on it at the
    same step); ``Superseded`` is raised once the loop has ended.
    """

    def __init__(self, run: RunDirectory) -> None:
        self._run = run
        self._stopped_at: int | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._run.fence.still_current(force=bool(control.should_save)):
            self._stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = False

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._stopped_at is not None:
            raise Superseded(
                f"a newer attempt owns the run (this one stopped at step {self._stopped_at})"
            )


class CheckpointSealCallback(TrainerCallback):
    """Seal each checkpoint the Trainer has written (manifest of sizes and SHA-256), prune
    older ones, and publish it as the resume hint in the next heartbeat.

    Sealing and pruning happen under the fence: a checkpoint written after a newer attempt
    took the run over is deleted unsealed (it is this attempt's own), nothing else is.
    """

    def __init__(
        self, run: RunDirectory, attempt: int, config_digest: str, reporter: ProgressSink
    ) -> None:
        self._run = run
        self._run_dir = run.path
        self._attempt = attempt
        self._digest = config_digest
        self._reporter = reporter

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = checkpoints.checkpoint_dir(self._run_dir, self._attempt, state.global_step)
        try:
            with self._run.fence.exclusive():
                checkpoints.write_manifest(path, state.global_step, self._attempt, self._digest)
                checkpoints.prune(self._run_dir, self._attempt)
        except Superseded:
            shutil.rmtree(path, ignore_errors=True)
            raise
        self._run.checkpoint_sealed(path)  # to the runs store, if any, in the background
        metrics.CHECKPOINTS.inc()
        self._reporter.update(latest_checkpoint=str(path))
        self._reporter.heartbeat_now()  # the retry's resume hint
        self._reporter.signal_soon()
        log.info("training.checkpoint", step=state.global_step, path=str(path))


class EvaluationPhaseCallback(TrainerCallback):
    """An evaluation is a phase of its own: reported, watched batch by batch, cancellable.

    The Trainer has no hook before an evaluation starts, so the phase is set when the
    callbacks before this one have asked for an evaluation (``control.should_evaluate``),
    and by ``TrainingSession.evaluate`` for the final one. Every batch is progress for the
    watchdog and, when ``cancellable``, a point where a cancel stops the evaluation (it can
    take long). Under torchrun it is not: a rank leaving an evaluation alone would leave
    the others waiting in a collective, so a cancel lands after the evaluation there.
    """

    def __init__(self, reporter: ProgressSink, stop: StopControl, cancellable: bool) -> None:
        self._reporter = reporter
        self._stop = stop
        self._cancellable = cancellable
        self._training = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_evaluate:
            self._reporter.update(phase="evaluating")

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_evaluate:
            self._reporter.update(phase="evaluating")

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._reporter.progressed()
        if self._cancellable and self._stop.cancel_requested():
            self._stop.cancelled = True
            raise TrainingCancelled()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._training:
            self._reporter.update(phase="training")


def at_epoch_end(state: Any) -> bool:
    """Whether the step just taken is the last of an epoch (``state.epoch`` is then whole:
    the Trainer sets it to ``epoch + (step + 1) / steps_in_epoch``)."""
    epoch = float(state.epoch or 0)
    return epoch >= 1 and abs(epoch - round(epoch)) < 1e-9


class EpochEvaluationCallback(TrainerCallback):
    """Evaluate at the end of every epoch but the last (the history in the run's record);
    the final evaluation runs after training, outside the measured training time."""

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A stop (cancel, preemption) also ends the epoch loop: that is no epoch's end.
        if state.global_step < state.max_steps and not control.should_training_stop:
            control.should_evaluate = True


class EpochEndCheckpointCallback(TrainerCallback):
    """A checkpoint asked for at an epoch's last step (by the checkpoint schedule, or a
    preemption) is saved a moment later, after that epoch's evaluation, so that it carries
    the evaluation in its log history. Saved before it, an attempt lost in between would
    leave a checkpoint at the epoch's end without it: the attempt resuming from it would
    train on (or report the rung) with that epoch missing from the run's history.

    Goes after the ranks' agreement: every rank then moves the same agreed save.
    """

    def __init__(self) -> None:
        self._deferred = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save and state.global_step < state.max_steps and at_epoch_end(state):
            control.should_save = False
            self._deferred = True

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._deferred:  # the epoch did end (even if a stop ended it): evaluate, then save
            self._deferred = False
            control.should_evaluate = True
            control.should_save = True


BEST_WEIGHTS_FILE = "best-epoch.safetensors"
BEST_EPOCH_FILE = "best-epoch.json"


class BestEpochCallback(TrainerCallback):
    """Early stopping and the best epoch, by one metric (``metric_for_best_model``; its
    direction from ``shared.tasks.is_minimized``).

    The evaluations are read from the Trainer's log history, which every checkpoint carries,
    so a resumed attempt counts the epochs evaluated before it. ``patience``: stop training
    once the metric has not improved (strictly) for that many evaluations (one per epoch).
    ``keep_best``: keep a copy of the best epoch's weights (on the CPU), and write it into
    each checkpoint the Trainer saves (before it is sealed), so a resumed attempt still has
    them. Rung decisions never see any of this: a pause reports its own epoch's evaluation.
    """

    def __init__(
        self,
        metric: str,
        patience: int | None,
        keep_best: bool,
        confusion_matrix: Callable[[], list[list[int]] | None],
        write_checkpoints: bool,
    ) -> None:
        self.metric = metric
        self._patience = patience
        self._keep_best = keep_best
        self._confusion_matrix = confusion_matrix
        self._write_checkpoints = write_checkpoints
        self.patience_stopped = False
        self._training = False
        # The best evaluation's step, its weights (keep_best) and confusion matrix.
        self.best_step: int | None = None
        self.best_weights: dict[str, Any] | None = None
        self.best_confusion_matrix: list[list[int]] | None = None
        self._resume_from: Path | None = None

    def evaluations(self, log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
        """(step, metric) of every evaluation logged, one per step, in step order."""
        by_step = {
            int(entry.get("step", 0)): float(entry[self.metric])
            for entry in log_history
            if self.metric in entry and "eval_loss" in entry
        }
        return sorted(by_step.items())

    def best_of(self, log_history: list[dict[str, Any]]) -> tuple[int | None, int]:
        """The best evaluation's step (the first to reach the best value) and how many
        evaluations came after it."""
        best: tuple[int, float] | None = None
        since = 0
        for step, value in self.evaluations(log_history):
            if best is None or (value < best[1] if is_minimized(self.metric) else value > best[1]):
                best, since = (step, value), 0
            else:
                since += 1
        return (best[0] if best else None), since

    def resume_from(self, checkpoint: Path | None) -> None:
        """The checkpoint this attempt resumes from: its copy of the best weights, if any."""
        self._resume_from = checkpoint

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training = True
        if not self._keep_best or self._resume_from is None:
            return
        marker = self._resume_from / BEST_EPOCH_FILE
        weights = self._resume_from / BEST_WEIGHTS_FILE
        best_step, _ = self.best_of(state.log_history)
        if marker.is_file() and weights.is_file():
            saved = json.loads(marker.read_text(encoding="utf-8"))
            if saved.get("step") == best_step:
                from safetensors.torch import load_file

                self.best_step = best_step
                self.best_weights = load_file(str(weights))
                self.best_confusion_matrix = saved.get("confusion_matrix")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training = False

    def on_evaluate(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        best_step, since = self.best_of(state.log_history)
        if best_step is None:
            return
        if best_step == state.global_step and best_step != self.best_step:
            self.best_step = best_step
            self.best_confusion_matrix = self._confusion_matrix()
            if self._keep_best and model is not None:
                self.best_weights = {
                    name: tensor.detach().to("cpu", copy=True)
                    for name, tensor in model.state_dict().items()
                }
        if (
            self._training
            and self._patience is not None
            and since >= self._patience
            and state.global_step < state.max_steps
        ):
            log.info(
                "training.early_stopping",
                metric=self.metric,
                best_step=best_step,
                evaluations_without_improvement=since,
            )
            self.patience_stopped = True
            control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not (self._keep_best and self._write_checkpoints and self.best_weights is not None):
            return
        from safetensors.torch import save_file

        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not path.is_dir():
            return
        save_file(self.best_weights, str(path / BEST_WEIGHTS_FILE))
        (path / BEST_EPOCH_FILE).write_text(
            json.dumps({"step": self.best_step, "confusion_matrix": self.best_confusion_matrix}),
            encoding="utf-8",
        )


EVALUATION_MATRIX_FILE = "evaluation-confusion-matrix.json"


def last_evaluation_step(log_history: list[dict[str, Any]]) -> int | None:
    """The step of the latest evaluation the Trainer logged; None before the first."""
    steps = [int(entry.get("step", 0)) for entry in log_history if "eval_loss" in entry]
    return max(steps, default=None)


class EvaluationMatrixCallback(TrainerCallback):
    """Write into each checkpoint the confusion matrix of the evaluation at its step (before
    the checkpoint is sealed), so an attempt that resumes from it with nothing left to train
    (a pruned trial finishing at its rung) commits the whole evaluation without evaluating
    the model again. The Trainer's log history, which the checkpoint carries, has only the
    scores. Single-label only: the other tasks keep no matrix."""

    def __init__(
        self, confusion_matrix: Callable[[], list[list[int]] | None], write_checkpoints: bool
    ) -> None:
        self._confusion_matrix = confusion_matrix
        self._write_checkpoints = write_checkpoints

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        matrix = self._confusion_matrix()
        if not self._write_checkpoints or matrix is None:
            return
        if last_evaluation_step(state.log_history) != state.global_step:
            return  # a checkpoint between evaluations: the matrix is another step's
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():
            payload = {"step": state.global_step, "confusion_matrix": matrix}
            (path / EVALUATION_MATRIX_FILE).write_text(json.dumps(payload), encoding="utf-8")


def read_evaluation_matrix(checkpoint: Path, step: int) -> list[list[int]] | None:
    """The confusion matrix a checkpoint carries for its own step's evaluation; None when it
    has none (an older checkpoint, another task) or the file is not what we write."""
    try:
        saved = json.loads((checkpoint / EVALUATION_MATRIX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("step") != step:
        return None
    matrix = saved.get("confusion_matrix")
    if not (isinstance(matrix, list) and all(isinstance(row, list) for row in matrix)):
        return None
    if not all(isinstance(n, int) and n >= 0 for row in matrix for n in row):
        return None
    return matrix


class LoggingCallback(TrainerCallback):
    """Structured log events instead of the Trainer's printed dicts."""

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            log.info(
                "training.step",
                step=state.global_step,
                max_steps=state.max_steps,
                loss=float(logs["loss"]),
            )

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any
    ) -> None:
        if metrics:
            log.info("training.evaluated", step=state.global_step, metrics=metrics)


class StepAgreementCallback(TrainerCallback):
    """At every step end, the ranks agree on stopping, saving, evaluating and logging.

    Each flag becomes true on every rank when it is true on any: a timed checkpoint decided
    by one rank's clock, or a shutdown seen first by one rank, happens on all of them at the
    same step. ``shutdown`` is what the ranks' stop control reads; the stop callback, which
    runs before this one, acts on it one step later on every rank alike.
    """

    def __init__(self, local_shutdown: Callable[[], bool]) -> None:
        self._local_shutdown = local_shutdown
        self.shutdown = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch
        import torch.distributed as dist

        flags = torch.tensor(
            [
                self._local_shutdown(),
                control.should_training_stop,
                control.should_save,
                control.should_evaluate,
                control.should_log,
            ],
            dtype=torch.int32,
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        shutdown, stop, save, evaluate, log = (bool(flag) for flag in flags.tolist())
        self.shutdown = self.shutdown or shutdown
        control.should_training_stop = stop
        control.should_save = save
        control.should_evaluate = evaluate
        control.should_log = log


class CheckpointBarrierCallback(TrainerCallback):
    """Every rank writes its own RNG state into a checkpoint; the leader seals the folder
    only once all of them have finished writing."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        dist.barrier()


Hook = TypeVar("Hook", bound=Callable[..., None])


def never_raises(hook: Hook) -> Hook:
    """Tracking is best effort: a failing hook is logged and counted, training goes on."""

    @functools.wraps(hook)
    def guarded(self: TrackingCallback, *args: Any, **kwargs: Any) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception:
            self._tracking.count_error(hook.__name__)

    return guarded  # type: ignore[return-value]


class TrackingCallback(TrainerCallback):
    """Params when training begins, every logged number at its step, each confusion matrix."""

    def __init__(self, tracking: RunTracking) -> None:
        self._tracking = tracking

    @never_raises
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._tracking.begin(
            # global_step is already the checkpoint's step when the Trainer resumed.
            resumed_from_step=state.global_step or None,
            max_steps=state.max_steps,
            params={
                "max_steps": str(state.max_steps),
                "checkpoint_steps": str(args.save_steps),
                "logging_steps": str(args.logging_steps),
                "eval_strategy": str(getattr(args.eval_strategy, "value", args.eval_strategy)),
            },
            tags={"bert_finetune.device": args.device.type},
        )

    @never_raises
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        numbers = {
            key: float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self._tracking.log_metrics(numbers, state.global_step)

    @never_raises
    def on_evaluate(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        labels = [str(id2label[i]) for i in sorted(id2label)]
        self._tracking.log_confusion_matrix(labels, state.global_step)

    @never_raises
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._tracking.training_stopped(state.global_step, float(state.epoch or 0.0))


def build_callbacks(
    request: BertFineTuneRequest,
    run: RunDirectory,
    attempt: Attempt,
    identity: str,
    reporter: ProgressSink,
    stop: StopControl,
    ranks: Ranks,
    *,
    evaluates: bool,
    stop_at_epoch: int | None,
    confusion_matrix: Callable[[], list[list[int]] | None],
    best_epoch: BestEpochCallback | None = None,
) -> list[TrainerCallback]:
    """Every callback of one attempt, in the order the Trainer calls them. The order matters:
    - observers and the stop request first, so every later callback sees this step counted
      and a cancel asked for;
    - the fence (leader only) before anything that saves, so a superseded attempt never
      writes; the best epoch (early stopping, ``keep_best_epoch``) and the evaluation's
      confusion matrix next: they write their files into a checkpoint before the checkpoint
      seal seals it (between ranks, behind a barrier);
    - the evaluation and checkpoint schedules, then the epoch stop (a pause seals);
    - tracking after them, so it logs what they decided;
    - the evaluation phase after the others: it reads the evaluation they asked for;
    - the ranks' agreement: it sees every other callback's decision;
    - last, a checkpoint agreed at an epoch's last step moved after the epoch's evaluation.
    """
    hooks: list[TrainerCallback] = [
        MetricsCallback(),
        ProgressCallback(reporter),
        LoggingCallback(),
        StopCallback(stop),
        *([FenceCallback(run)] if ranks.is_leader else []),
        *([best_epoch] if best_epoch is not None and evaluates else []),
        *(
            [EvaluationMatrixCallback(confusion_matrix, write_checkpoints=ranks.is_leader)]
            if evaluates
            else []
        ),
        *ranks.sealing(CheckpointSealCallback(run, attempt.number, identity[:16], reporter)),
    ]
    if evaluates:
        hooks.append(EpochEvaluationCallback())
    if request.config.checkpoint_steps is None:
        hooks.append(TimedCheckpointCallback(attempt.checkpoint_interval_seconds))
    if stop_at_epoch is not None:
        hooks.append(EpochStopCallback(stop_at_epoch, seal=request.pause_at_epoch == stop_at_epoch))
    tracking = attempt.tracking
    if tracking is not None and tracking.config.enabled and ranks.is_leader:
        tracking.watch_confusion_matrix(confusion_matrix)
        hooks.append(TrackingCallback(tracking))
    if evaluates:
        hooks.append(EvaluationPhaseCallback(reporter, stop, cancellable=ranks.world_size == 1))
    hooks.extend(ranks.agreement())
    if evaluates:
        hooks.append(EpochEndCheckpointCallback())
    return hooks
