"""The stages ``training.fine_tune`` runs, each small and testable on its own."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.trainer.distributed.ranks import SINGLE_PROCESS, Ranks
from services.trainer.run_folder import checkpoints
from services.trainer.run_folder.fencing import AttemptToken, Superseded
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.run_folder.run_directory import (
    Ownership,
    RunDirectory,
    epochs_wanted,
    reuse_record,
    reused_result,
)
from services.trainer.training.arguments import training_arguments
from services.trainer.training.data import PreparedData
from services.trainer.training.evaluation import (
    IGNORED,
    ClassificationMetrics,
    TaskMetrics,
    eval_metrics,
    metrics_for,
    reduce_logits,
    refuse_non_finite,
)
from services.trainer.training.progress_sink import ProgressSink
from services.trainer.training.resources import BatchPlan, with_batch_fallback
from services.trainer.training.stopping import StopControl
from services.trainer.training.token_cache import TokenCache, cache_key
from shared import metrics
from shared.logging import get_logger
from shared.model_loading import load_for_fine_tuning
from shared.run_record import EpochEvaluation, RunRecord
from shared.runs import write_confusion_matrix
from shared.tasks import SINGLE_LABEL, TOKEN_CLASSIFICATION, Task
from shared.types import BertFineTuneRequest, BertFineTuneResult

if TYPE_CHECKING:
    from services.trainer.tracking.trackers import RunTracking
    from services.trainer.training.callbacks import BestEpochCallback

log = get_logger(__name__)


@dataclass(frozen=True)
class Attempt:
    """What the worker knows about this attempt of the run."""

    number: int = 1
    # The newest checkpoint the previous attempt reported in its heartbeat details.
    resume_hint: str | None = None
    owner: Ownership | None = None
    # The workflow run this attempt belongs to: attempt numbers are ordered within one.
    workflow_run_id: str = ""
    # The folders the run's local paths may name; None: the working directory and the runs.
    path_roots: LocalPathRoots | None = None
    checkpoint_interval_seconds: float = checkpoints.DEFAULT_INTERVAL_SECONDS
    # Experiment tracking (MLflow, TensorBoard); its Trainer callback joins the others.
    tracking: RunTracking | None = None

    @property
    def token(self) -> AttemptToken:
        """Who may write the run folder (see ``fencing``)."""
        workflow_id = self.owner.workflow_id if self.owner else ""
        return AttemptToken(workflow_id, self.workflow_run_id, self.number)


def reuse_finished_work(
    run: RunDirectory, request: BertFineTuneRequest, identity: str, attempt: Attempt
) -> BertFineTuneResult | None:
    """The result of finished work equal to this request's, without training: this run's
    own, or another run's (any experiment or sweep) completed here as a pointer to it."""
    own = run.reusable(request, identity)
    if own is not None:
        log.info("training.reused", run_dir=str(run.path), reused_from=own.reused_from)
        return reused_result(own, run.location)
    if request.overwrite:
        return None
    source = run.find_source(identity, epochs_wanted(request))
    if source is None:
        return None
    run.claim(attempt.owner, attempt.token, request.overwrite, identity)
    source_dir = run.location_of(source.run_id)
    pointer = run.commit_reuse(reuse_record(request, source, source_dir), source)
    log.info("training.reused", run_dir=str(run.path), reused_from=source.run_id)
    return pointer.result


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming the run folder: the finished result when an earlier attempt
    completed the run meanwhile, else where training resumes (None: from scratch) and the
    digests a checkpoint of this work may carry."""

    finished: BertFineTuneResult | None = None
    resume: checkpoints.Checkpoint | None = None
    digests: frozenset[str] = frozenset()


def claim_or_reuse(
    run: RunDirectory, request: BertFineTuneRequest, attempt: Attempt, identity: str, data: str
) -> Claim:
    """Claim the folder for this attempt and find the newest sealed checkpoint to resume
    from, or return the finished result when the run was completed meanwhile by an earlier
    attempt that lost its connection but finished."""
    try:
        run.claim(attempt.owner, attempt.token, request.overwrite, identity)
    except Superseded:
        record = run.finished_record()
        if record is None or record.identity != identity:
            raise
        log.info("training.reused", run_dir=str(run.path), completed_by_attempt=record.attempt)
        return Claim(finished=reused_result(record, run.location))
    digests = run.checkpoint_digests(identity, request, data)
    return Claim(
        resume=run.resume_checkpoint(attempt.resume_hint, digests), digests=frozenset(digests)
    )


def tokenize(
    data: PreparedData,
    tokenizer: Any,
    max_seq_length: int,
    on_batch: Callable[[], None] | None = None,
    cache: TokenCache | None = None,
) -> tuple[Any, Any]:
    """Token ids for both splits; ``on_batch`` runs before each batch of 1,000 rows (progress
    for the watchdog, and a point to stop at). With a ``cache``, splits tokenized before by
    any run or trial with the same data, tokenizer and length are read instead."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        if on_batch:
            on_batch()
        # Truncate only: the collator pads each batch to its own longest row.
        if "words" in batch:  # token classification: one tag per word, on its first token
            encoded = tokenizer(
                batch["words"],
                is_split_into_words=True,
                truncation=True,
                max_length=max_seq_length,
            )
            encoded["labels"] = [
                align_tags(encoded.word_ids(index), tags)
                for index, tags in enumerate(batch["labels"])
            ]
            return encoded
        if "text_pair" in batch:  # the pair's two texts, separated as the model expects
            return tokenizer(
                batch["text"], batch["text_pair"], truncation=True, max_length=max_seq_length
            )
        return tokenizer(batch["text"], truncation=True, max_length=max_seq_length)

    def fingerprint(split: str) -> str:
        # Named explicitly: ``encode`` holds a stop callback that `datasets` cannot hash (it
        # would warn on stderr and fingerprint at random).
        key = f"{data.fingerprint}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_seq_length}"
        return hashlib.sha256(f"{key}|{split}".encode()).hexdigest()[:32]

    def split(rows: Any, name: str) -> Any:
        def build() -> Any:
            dropped = [c for c in ("text", "text_pair", "words") if c in rows.column_names]
            return rows.map(
                encode, batched=True, remove_columns=dropped, new_fingerprint=fingerprint(name)
            )

        if cache is None:
            return build()
        return cache.get_or_build(
            cache_key(data.fingerprint, tokenizer, max_seq_length), name, build
        )

    train = split(data.train, "train")
    evaluation = split(data.eval, "eval") if data.eval is not None else None
    return train, evaluation


def align_tags(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """One label per token: a word's tag on its first token; its later tokens, special
    tokens and padding are ignored by the loss and the metrics (-100)."""
    aligned = []
    previous: int | None = None
    for word in word_ids:
        aligned.append(IGNORED if word is None or word == previous else tags[word])
        previous = word
    return aligned


def tokenize_watched(
    data: PreparedData,
    tokenizer: Any,
    max_seq_length: int,
    reporter: ProgressSink,
    stop: StopControl,
    cache: TokenCache | None = None,
) -> tuple[Any, Any]:
    """``tokenize`` with progress for the watchdog (tokenizing a large dataset takes long)
    and a stop point before each batch (a cancel or shutdown lands here, not at the end)."""

    def tokenized_batch() -> None:
        reporter.progressed()
        stop.check()

    reporter.update(phase="tokenizing")
    return tokenize(data, tokenizer, max_seq_length, on_batch=tokenized_batch, cache=cache)


def stop_epoch(request: BertFineTuneRequest) -> int | None:
    """The epoch this request stops training at before ``num_epochs`` (None: train all)."""
    asked = [e for e in (request.pause_at_epoch, request.finish_at_epoch) if e is not None]
    if not asked or min(asked) >= request.config.num_epochs:
        return None
    return min(asked)


def evaluation_history(
    log_history: list[dict[str, Any]], task: Task | None = None
) -> list[EpochEvaluation]:
    """The evaluations in a Trainer's log history (earlier attempts' included), by epoch;
    each with the task's metrics in its order."""
    by_step: dict[int, EpochEvaluation] = {}
    for entry in log_history:
        if "eval_loss" in entry:
            step = int(entry.get("step", 0))
            by_step[step] = EpochEvaluation(
                epoch=round(float(entry.get("epoch", 0))),
                global_step=step,
                metrics=eval_metrics(entry, task),
            )
    return [by_step[step] for step in sorted(by_step)]


def mean_logged_loss(log_history: list[dict[str, Any]]) -> float:
    losses = [float(entry["loss"]) for entry in log_history if "loss" in entry]
    return sum(losses) / len(losses) if losses else math.nan


@dataclass
class Trained:
    train_loss: float
    global_step: int
    epochs_completed: int
    stopped_early: bool
    resumed_from_step: int | None
    seconds: float
    samples_per_second: float
    num_parameters: int
    num_train_samples: int
    notes: list[str] = field(default_factory=list)
    # Stopped by ``early_stopping_patience``: a finished run, not a pruned one.
    patience_stopped: bool = False


@dataclass
class Evaluation:
    metrics: dict[str, float] = field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None
    history: list[EpochEvaluation] = field(default_factory=list)
    num_samples: int = 0
    # ``keep_best_epoch``: the epoch whose model (and metrics) the commit keeps.
    best_epoch: int | None = None


class TrainingSession:
    """A ``Trainer`` set up for one attempt: the callbacks, arguments and stop epoch."""

    def __init__(
        self,
        request: BertFineTuneRequest,
        trainer: Any,
        classification: TaskMetrics,
        steps_per_epoch: int,
        use_cuda: bool,
        reporter: ProgressSink,
        best: BestEpochCallback | None = None,
    ) -> None:
        self.request = request
        self.trainer = trainer
        self._classification = classification
        self._best = best
        # The confusion matrix the commit saves when it keeps another epoch than the last.
        self._kept_confusion_matrix: list[list[int]] | None = None
        self._steps_per_epoch = steps_per_epoch
        self._use_cuda = use_cuda
        self._reporter = reporter
        self._stop_epoch = stop_epoch(request)

    @classmethod
    def build(
        cls,
        request: BertFineTuneRequest,
        run: RunDirectory,
        attempt: Attempt,
        identity: str,
        model: Any,
        tokenizer: Any,
        train_set: Any,
        eval_set: Any,
        reporter: ProgressSink,
        stop: StopControl,
        ranks: Ranks = SINGLE_PROCESS,
        batch: BatchPlan | None = None,
    ) -> TrainingSession:
        import torch
        from transformers import (
            DataCollatorForTokenClassification,
            DataCollatorWithPadding,
            TrainingArguments,
        )
        from transformers.trainer_callback import PrinterCallback
        from transformers.utils import logging as transformers_logging

        from services.trainer.training import callbacks
        from services.trainer.training.sampling import LengthGroupedTrainer

        transformers_logging.disable_progress_bar()
        config = request.config
        use_cuda = config.use_gpu and torch.cuda.is_available()
        steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
        max_steps = steps_per_epoch * config.num_epochs
        ends_at = stop_epoch(request)
        args = training_arguments(
            config,
            output_dir=str(checkpoints.attempt_dir(run.path, attempt.number)),
            max_steps=max_steps,
            use_cuda=use_cuda,
            bf16=use_cuda and torch.cuda.is_bf16_supported(),
            checkpoint_steps=config.checkpoint_steps,
            world_size=ranks.world_size,
            batch=batch,
        )
        id2label = model.config.id2label or {}
        label_names = [str(id2label[i]) for i in sorted(id2label)]
        classification = metrics_for(config.task, label_names)
        best = None
        if config.early_stopping_patience is not None or config.keep_best_epoch:
            best = callbacks.BestEpochCallback(
                config.best_model_metric(),
                config.early_stopping_patience,
                config.keep_best_epoch,
                lambda: classification.confusion_matrix,
                write_checkpoints=ranks.is_leader,
            )
        hooks = callbacks.build_callbacks(
            request,
            run,
            attempt,
            identity,
            reporter,
            stop,
            ranks,
            evaluates=eval_set is not None,
            stop_at_epoch=ends_at,
            confusion_matrix=lambda: classification.confusion_matrix,
            best_epoch=best,
        )
        if config.task == TOKEN_CLASSIFICATION:
            collator: Any = DataCollatorForTokenClassification(tokenizer)
        else:
            collator = DataCollatorWithPadding(tokenizer)
        trainer = LengthGroupedTrainer(
            model=model,
            args=TrainingArguments(**args),
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            data_collator=collator,
            compute_metrics=classification,
            preprocess_logits_for_metrics=reduce_logits(config.task),
            callbacks=hooks,
        )
        trainer.remove_callback(PrinterCallback)  # LoggingCallback logs structured events
        log.info(
            "training.start",
            device="cuda" if use_cuda else "cpu",
            max_steps=max_steps,
            checkpoint_steps=config.checkpoint_steps,
            checkpoint_interval_seconds=attempt.checkpoint_interval_seconds,
            stop_epoch=ends_at,
            train_rows=len(train_set),
        )
        return cls(request, trainer, classification, steps_per_epoch, use_cuda, reporter, best)

    def train(self, resume: checkpoints.Checkpoint | None) -> Trained:
        """Train from ``resume`` (or from scratch) to the end or to the stop epoch."""
        config = self.request.config
        resumed_from = resume.step if resume else None
        if resume:
            metrics.RUNS_RESUMED.inc()
            log.info("training.resume", step=resume.step, checkpoint=str(resume.path))
            self._reporter.update(resumed_from_step=resume.step, latest_checkpoint=str(resume.path))
        # Never train past the epoch this segment stops at, whatever it resumes from: a
        # segment that sealed its pause (or rung) checkpoint and was then lost resumes at
        # that epoch and has nothing left to train.
        ends_at = self._stop_epoch
        if resume and ends_at is not None and resume.step >= ends_at * self._steps_per_epoch:
            return self._take_checkpoint_as_trained(resume, ends_at)
        if self._best is not None:
            self._best.resume_from(resume.path if resume else None)
        started = time.monotonic()
        output = self.trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        state = self.trainer.state
        epochs = min(config.num_epochs, round(state.epoch or 0))
        samples_per_second = float(output.metrics.get("train_samples_per_second", 0.0))
        metrics.SAMPLES_PER_SECOND.set(samples_per_second)
        log.info(
            "training.finished",
            global_step=state.global_step,
            resumed_from_step=resumed_from,
            steps_trained=state.global_step - (resumed_from or 0),
        )
        patience = self._best is not None and self._best.patience_stopped
        return Trained(
            train_loss=float(output.training_loss),
            global_step=state.global_step,
            epochs_completed=epochs,
            # Early stopping ends a run as finished: only a sweep's pruning stops it early.
            stopped_early=epochs < config.num_epochs and not patience,
            patience_stopped=patience,
            resumed_from_step=resumed_from,
            seconds=round(time.monotonic() - started, 3),
            samples_per_second=samples_per_second,
            num_parameters=int(self.trainer.model.num_parameters()),
            num_train_samples=len(self.trainer.train_dataset),
        )

    def _take_checkpoint_as_trained(self, resume: checkpoints.Checkpoint, epochs: int) -> Trained:
        """The segment's stop epoch was already reached: a pruned trial paused at exactly this
        epoch (its sealed checkpoint is the model), or a pause whose checkpoint was sealed by
        an attempt lost before it returned (``paused_result`` then reports the evaluation
        logged at ``epochs``, kept in the checkpoint's state)."""
        from safetensors.torch import load_model
        from transformers import TrainerState

        from services.trainer.training.callbacks import read_evaluation_matrix

        load_model(self.trainer.model, str(resume.path / "model.safetensors"))
        self.trainer.state = TrainerState.load_from_json(str(resume.path / "trainer_state.json"))
        # The evaluation at this step is in the state's history; with its confusion matrix
        # from the checkpoint, ``evaluate`` need not run the model over the data again.
        matrix = read_evaluation_matrix(resume.path, resume.step)
        if matrix is not None and isinstance(self._classification, ClassificationMetrics):
            self._classification.restore(matrix)
        if self._best is not None:  # the best epoch's weights the checkpoint carries
            self._best.resume_from(resume.path)
            self._best.on_train_begin(self.trainer.args, self.trainer.state, None)
            self._best.on_train_end(self.trainer.args, self.trainer.state, None)
        log.info("training.finished_from_checkpoint", step=resume.step, epochs=epochs)
        return Trained(
            train_loss=mean_logged_loss(self.trainer.state.log_history),
            global_step=resume.step,
            epochs_completed=epochs,
            stopped_early=epochs < self.request.config.num_epochs,
            resumed_from_step=resume.step,
            seconds=0.0,
            samples_per_second=0.0,
            num_parameters=int(self.trainer.model.num_parameters()),
            num_train_samples=len(self.trainer.train_dataset),
        )

    def evaluate(self) -> Evaluation:
        """The model's evaluation at the end of training: the one done at the final step
        during training when there was one, else a new one."""
        if self.trainer.eval_dataset is None:
            return Evaluation()
        state = self.trainer.state
        history = evaluation_history(state.log_history, self.request.config.task)
        # Single-label keeps the latest evaluation's confusion matrix in memory only: a
        # resumed attempt evaluates again to have it.
        latest = self._classification.confusion_matrix is not None or (
            self.request.config.task != SINGLE_LABEL
        )
        if not (history and history[-1].global_step == state.global_step and latest):
            self._reporter.update(phase="evaluating")
            args = self.trainer.args
            with_batch_fallback(
                "evaluation", BatchPlan(args.per_device_eval_batch_size), self._evaluate_with
            )
            history = evaluation_history(state.log_history, self.request.config.task)
        final = history[-1].metrics
        if "eval_accuracy" in final:
            metrics.EVAL_ACCURACY.set(final["eval_accuracy"])
            self._reporter.update(eval_accuracy=final["eval_accuracy"])
        return Evaluation(
            metrics=final,
            confusion_matrix=self._classification.confusion_matrix,
            history=history,
            num_samples=len(self.trainer.eval_dataset),
        )

    def keep_best_epoch(self, evaluation: Evaluation) -> Evaluation:
        """``keep_best_epoch``: the best epoch's weights back into the model (what the commit
        saves) and its evaluation as the result's; the evaluation as it is otherwise, or
        when the best is the last (or its weights were lost: noted)."""
        best = self._best
        if best is None or not self.request.config.keep_best_epoch or not evaluation.history:
            return evaluation
        best_step, _ = best.best_of(self.trainer.state.log_history)
        kept = next((e for e in evaluation.history if e.global_step == best_step), None)
        if kept is None:
            return evaluation
        if best_step == evaluation.history[-1].global_step:
            return replace(evaluation, best_epoch=kept.epoch)
        if best.best_weights is None or best.best_step != best_step:
            log.warning("training.best_epoch_lost", best_step=best_step)
            return evaluation
        self.trainer.model.load_state_dict(best.best_weights)
        self._kept_confusion_matrix = best.best_confusion_matrix
        log.info("training.best_epoch_kept", epoch=kept.epoch, step=best_step)
        return replace(
            evaluation,
            metrics=kept.metrics,
            confusion_matrix=best.best_confusion_matrix,
            best_epoch=kept.epoch,
        )

    def _evaluate_with(self, batch: BatchPlan) -> None:
        """One evaluation at ``batch.per_device`` rows per pass (no gradients to accumulate)."""
        self.trainer.args.per_device_eval_batch_size = batch.per_device
        self.trainer.evaluate()

    def pausing(self, trained: Trained) -> bool:
        """Whether this attempt ends in a pause (a checkpoint, no commit)."""
        pause = self.request.pause_at_epoch
        return pause is not None and pause == self._stop_epoch and trained.stopped_early

    def save_model(self, target: Path) -> None:
        """The model and tokenizer, and the final evaluation's confusion matrix in a file of
        its own (not in ``run.json``, which every inference request reads)."""
        self.trainer.save_model(str(target))
        matrix = self._kept_confusion_matrix or self._classification.confusion_matrix
        if matrix is not None and self.trainer.eval_dataset is not None:
            id2label = self.trainer.model.config.id2label or {}
            labels = [str(id2label.get(i, i)) for i in range(len(matrix))]
            write_confusion_matrix(target, labels, matrix)

    def release(self, offload: bool = False) -> None:
        """Free the model's memory now (a worker trains many runs in one process);
        ``offload`` moves its weights off the device first, for a retry that loads anew."""
        if offload and self._use_cuda and self.trainer is not None:
            self.trainer.model.to("cpu")
        self.trainer = None
        if self._use_cuda:
            import torch

            torch.cuda.empty_cache()


def train_within_memory(
    build: Callable[[BatchPlan], TrainingSession],
    resume: checkpoints.Checkpoint | None,
    newest_checkpoint: Callable[[], checkpoints.Checkpoint | None],
    batch_size: int,
) -> tuple[TrainingSession, Trained]:
    """Train; after an out-of-memory error, again with half the per-device batch and twice
    the gradient accumulation (the same rows per optimizer step), on a freshly built session
    resumed from the newest sealed checkpoint. ``ResourceExhausted`` when one row per pass
    does not fit."""

    def train(batch: BatchPlan) -> tuple[TrainingSession, Trained]:
        session = build(batch)
        try:
            return session, session.train(newest_checkpoint() if batch.reduced else resume)
        except BaseException:
            session.release(offload=True)
            raise

    (session, trained), batch = with_batch_fallback("training", BatchPlan(batch_size), train)
    if batch.reduced:
        trained.notes.append(batch.note())
    return session, trained


@dataclass(frozen=True)
class SessionBuilder:
    """Builds this attempt's ``TrainingSession`` for a batch plan (one per out-of-memory
    retry): everything the Trainer needs, gathered by the stages before training."""

    request: BertFineTuneRequest
    run: RunDirectory
    attempt: Attempt
    identity: str
    model: Any
    tokenizer: Any
    train_set: Any
    eval_set: Any
    label_names: list[str]
    reporter: ProgressSink
    stop: StopControl
    ranks: Ranks = SINGLE_PROCESS

    def __call__(self, batch: BatchPlan) -> TrainingSession:
        # After an out-of-memory error the model may have taken steps: fresh weights, and
        # the newest checkpoint (if any) restores the trained ones.
        model = self.model
        if batch.reduced:
            config = self.request.config
            model = load_for_fine_tuning(config.model_name, self.label_names, config.task)[1]
        return TrainingSession.build(
            self.request,
            self.run,
            self.attempt,
            self.identity,
            model,
            self.tokenizer,
            self.train_set,
            self.eval_set,
            self.reporter,
            self.stop,
            self.ranks,
            batch,
        )


def train(build: SessionBuilder, claim: Claim) -> tuple[TrainingSession, Trained]:
    """Train from the claim's checkpoint up to the request's stop epoch. One process retries
    an out-of-memory error with smaller per-device batches; ranks cannot retry alone (the
    others would wait in a collective), so a distributed attempt trains at its batch size."""
    batch_size = build.request.config.batch_size
    if build.ranks.world_size > 1:
        session = build(BatchPlan(batch_size))
        return session, session.train(claim.resume)
    return train_within_memory(
        build,
        claim.resume,
        lambda: build.run.resume_checkpoint(None, set(claim.digests)),
        batch_size,
    )


def _result(
    request: BertFineTuneRequest,
    run: RunDirectory,
    data: PreparedData,
    trained: Trained,
    evaluation: Evaluation,
    paused: bool = False,
) -> BertFineTuneResult:
    return BertFineTuneResult(
        run_id=request.run_id,
        config=request.config,
        train_loss=trained.train_loss,
        eval_accuracy=evaluation.metrics.get("eval_accuracy"),
        eval_metrics=evaluation.metrics,
        training_time_seconds=trained.seconds,
        num_parameters=trained.num_parameters,
        model_dir=run.location,
        num_train_samples=trained.num_train_samples,
        train_samples_per_second=trained.samples_per_second,
        label_names=data.label_names,
        resumed_from_step=trained.resumed_from_step,
        num_eval_samples=evaluation.num_samples,
        majority_baseline_accuracy=data.majority_baseline,
        baseline_metrics=data.baseline_metrics,
        task=request.config.task,
        best_epoch=evaluation.best_epoch,
        notes=[*data.notes, *trained.notes],
        epochs_completed=trained.epochs_completed,
        # A paused run has not stopped: it continues at the next execution.
        stopped_early=trained.stopped_early and not paused,
        paused=paused,
    )


def paused_result(
    request: BertFineTuneRequest,
    run: RunDirectory,
    data: PreparedData,
    trained: Trained,
    evaluation: Evaluation,
) -> BertFineTuneResult:
    """Evaluated and checkpointed at the pause epoch; the run stays partial (no run.json).

    The evaluation is the one logged at the end of the pause epoch, whichever checkpoint
    the attempt resumed from: the sweep's rung decision compares trials at that epoch."""
    at_pause = [e for e in evaluation.history if e.epoch == trained.epochs_completed]
    if at_pause and at_pause[-1].metrics != evaluation.metrics:
        evaluation = replace(evaluation, metrics=at_pause[-1].metrics)
    refuse_diverged(request, trained, evaluation)  # a rung decision on NaN would be noise
    log.info("training.paused", epoch=trained.epochs_completed, eval_metrics=evaluation.metrics)
    return _result(request, run, data, trained, evaluation, paused=True)


def refuse_diverged(request: BertFineTuneRequest, trained: Trained, evaluation: Evaluation) -> None:
    """``TrainingDiverged`` (before a commit or a pause) when the training loss or an
    evaluation is not finite: nothing is committed and no result carries NaN."""
    refuse_non_finite(
        trained.train_loss,
        evaluation.metrics,
        [(entry.epoch, entry.metrics) for entry in evaluation.history],
        request.config.learning_rate,
    )


def run_record(
    request: BertFineTuneRequest,
    run: RunDirectory,
    data: PreparedData,
    identity: str,
    trained: Trained,
    evaluation: Evaluation,
    attempt: Attempt,
) -> RunRecord:
    return RunRecord(
        run_id=request.run_id,
        config=request.config,
        data_fingerprint=data.fingerprint,
        identity=identity,
        label_names=data.label_names,
        result=_result(request, run, data, trained, evaluation),
        global_step=trained.global_step,
        epochs_completed=trained.epochs_completed,
        stopped_early=trained.stopped_early,
        eval_history=evaluation.history,
        # The confusion matrix is a file of its own (``TrainingSession.save_model``).
        attempt=attempt.number,
        versions=_versions(),
        finished_at=time.time(),
    )


def _versions() -> dict[str, str]:
    import datasets
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
    }
