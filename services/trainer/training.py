"""One fine-tuning run, top to bottom: data, tokenizer, model, Trainer, evaluate, save.

Runs in a worker thread (never on the event loop). Progress goes to a ``ProgressReporter``;
cancellation and worker shutdown are polled at every optimizer step.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.trainer import checkpoints, ownership
from services.trainer.data import PreparedData, prepare_data
from services.trainer.progress import ProgressReporter
from services.trainer.tracking import RunTracking
from shared import metrics
from shared.errors import INVALID_CONFIG, MODEL_LOAD_ERROR, failure
from shared.logging import get_logger
from shared.runs import (
    CHECKPOINTS_DIR,
    RUN_MANIFEST,
    is_complete,
    read_manifest,
    resolve_run_dir,
    write_json_atomic,
)
from shared.types import BertFineTuneConfig, BertFineTuneRequest, BertFineTuneResult

log = get_logger(__name__)


class TrainingCancelled(Exception):
    """The user cancelled the run; its partial output is removed."""


class TrainingInterrupted(Exception):
    """The attempt stopped early (worker shutdown or superseded); a retry resumes it."""


@dataclass(frozen=True)
class StopSignals:
    cancel_requested: Callable[[], bool]
    shutdown_requested: Callable[[], bool]


@dataclass(frozen=True)
class Ownership:
    """Who is training (the workflow id) and how to tell whether another workflow runs."""

    workflow_id: str
    is_running: Callable[[str], bool]


def config_digest(config: BertFineTuneConfig, data_fingerprint: str = "") -> str:
    """Identifies what a checkpoint was trained on: only an identical run may resume it."""
    payload = config.model_dump_json() + data_fingerprint
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_checkpoint_steps(max_steps: int) -> int:
    """About ten checkpoints per run, but none more often than every 50 steps."""
    return max(math.ceil(max_steps / 10), min(50, max_steps))


def _reuse_or_refuse(run_dir: Path, request: BertFineTuneRequest) -> dict[str, Any] | None:
    """The finished run's manifest when it may be reused; refuse a conflicting rerun."""
    if not is_complete(run_dir):
        return None
    manifest = read_manifest(run_dir)
    if request.overwrite:
        return None
    if manifest.get("config") != request.config.model_dump(mode="json"):
        raise failure(
            INVALID_CONFIG,
            f"run {request.run_id!r} already finished with a different config; "
            "use another experiment_name or set overwrite: true to replace it",
        )
    return manifest


def _clear_finished_run(run_dir: Path) -> None:
    """Retire a finished run before overwriting it: the manifest goes first."""
    (run_dir / RUN_MANIFEST).unlink(missing_ok=True)
    for entry in run_dir.iterdir():
        if entry.name not in (CHECKPOINTS_DIR, ownership.OWNER_FILE):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _load_model(config: BertFineTuneConfig, label_names: list[str]) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model_name, trust_remote_code=False)
    except Exception as err:
        raise failure(
            MODEL_LOAD_ERROR,
            f"model_name {config.model_name!r}: no usable tokenizer ({type(err).__name__}: "
            f"{err}); give a hub id or a directory with a saved model and tokenizer",
        ) from None
    # transformers builds an empty tokenizer from a bare config: every word would be [UNK].
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise failure(
            MODEL_LOAD_ERROR,
            f"model_name {config.model_name!r}: no usable tokenizer (no vocabulary files next "
            "to the weights); save the tokenizer with the model (tokenizer.save_pretrained)",
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            config.model_name,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            ignore_mismatched_sizes=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
    except Exception as err:
        raise failure(
            MODEL_LOAD_ERROR,
            f"model_name {config.model_name!r} cannot be loaded for sequence classification "
            f"({type(err).__name__}: {str(err).splitlines()[0][:300]}); it must be a "
            "BERT-style checkpoint saved with safetensors (no pickles, no remote code)",
        ) from None
    return tokenizer, model


def _tokenize(data: PreparedData, tokenizer: Any, max_seq_length: int) -> tuple[Any, Any]:
    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        # Truncate only: the collator pads each batch to its own longest row.
        return tokenizer(batch["text"], truncation=True, max_length=max_seq_length)

    train = data.train.map(encode, batched=True, remove_columns=["text"])
    evaluation = (
        data.eval.map(encode, batched=True, remove_columns=["text"])
        if data.eval is not None
        else None
    )
    return train, evaluation


def _make_callback(
    reporter: ProgressReporter,
    stop: StopSignals,
    run_dir: Path,
    attempt: int,
    digest: str,
) -> Any:
    from transformers import TrainerCallback

    class TemporalCallback(TrainerCallback):
        """Progress, checkpoint sealing, cancellation and preemption at step boundaries."""

        def __init__(self) -> None:
            self.cancelled = False
            self.interrupted = False
            self.last_step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last_step = state.global_step
            reporter.update(
                phase="training", global_step=state.global_step, max_steps=state.max_steps
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            steps = state.global_step - self.last_step
            metrics.STEPS.inc(steps)
            metrics.SAMPLES.inc(
                steps
                * args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * max(1, args.world_size)
            )
            self.last_step = state.global_step
            reporter.update(global_step=state.global_step, epoch=float(state.epoch or 0))
            if stop.cancel_requested():
                self.cancelled = True
                control.should_training_stop = True
                control.should_save = False
            elif stop.shutdown_requested() and not self.interrupted:
                # Preemption: seal a checkpoint at this step boundary, then stop.
                self.interrupted = True
                control.should_save = True
                control.should_training_stop = True

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
        ) -> None:
            if logs and "loss" in logs:
                loss = float(logs["loss"])
                metrics.TRAINING_LOSS.set(loss)
                reporter.update(loss=loss)
                log.info(
                    "training.step", step=state.global_step, max_steps=state.max_steps, loss=loss
                )

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            path = checkpoints.attempt_dir(run_dir, attempt) / f"checkpoint-{state.global_step}"
            checkpoints.write_manifest(path, state.global_step, attempt, digest)
            checkpoints.prune(run_dir, attempt)
            metrics.CHECKPOINTS.inc()
            reporter.update(latest_checkpoint=str(path))
            reporter.heartbeat_now()  # the retry's resume hint
            reporter.signal_soon()
            log.info("training.checkpoint", step=state.global_step, path=str(path))

    return TemporalCallback()


def _compute_accuracy(prediction: Any) -> dict[str, float]:
    import numpy as np

    logits = (
        prediction.predictions[0]
        if isinstance(prediction.predictions, tuple)
        else prediction.predictions
    )
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def _save_final(run_dir: Path, trainer: Any, attempt: int, manifest: dict[str, Any]) -> None:
    """Model files first (via a temporary folder), ``run.json`` last and atomically."""
    staging = run_dir / f".final-attempt-{attempt}"
    shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    # A pickle; the run's settings live in run.json, and run folders hold no pickles.
    (staging / "training_args.bin").unlink(missing_ok=True)
    for entry in staging.iterdir():
        target = run_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    staging.rmdir()
    write_json_atomic(run_dir / RUN_MANIFEST, manifest)
    shutil.rmtree(run_dir / CHECKPOINTS_DIR, ignore_errors=True)
    # Finished: run.json now guards the folder (reuse or refuse), no owner is needed.
    (run_dir / ownership.OWNER_FILE).unlink(missing_ok=True)


def _versions() -> dict[str, str]:
    import datasets
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
    }


def fine_tune(
    request: BertFineTuneRequest,
    runs_root: Path,
    reporter: ProgressReporter,
    stop: StopSignals,
    attempt: int = 1,
    resume_hint: str | None = None,
    owner: Ownership | None = None,
    tracking: RunTracking | None = None,
) -> BertFineTuneResult:
    config = request.config
    runs_root.mkdir(parents=True, exist_ok=True)
    run_dir = resolve_run_dir(runs_root, request.run_id)
    reusable = _reuse_or_refuse(run_dir, request)

    reporter.update(phase="loading_data")
    data = prepare_data(config)
    if reusable is not None:
        if reusable.get("data_fingerprint") == data.fingerprint:
            log.info("training.reused", run_dir=str(run_dir))
            result = BertFineTuneResult.model_validate(reusable["result"])
            return result.model_copy(update={"reused": True})
        raise failure(
            INVALID_CONFIG,
            f"run {request.run_id!r} already finished on different data; use another "
            "experiment_name or set overwrite: true to replace it",
        )
    if stop.cancel_requested():
        raise TrainingCancelled()

    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    reporter.update(phase="loading_model")
    tokenizer, model = _load_model(config, data.label_names)
    reporter.update(phase="tokenizing")
    train_set, eval_set = _tokenize(data, tokenizer, config.max_seq_length)
    if stop.cancel_requested():
        raise TrainingCancelled()
    if stop.shutdown_requested():
        # Nothing trained in this attempt yet: hand the run to another worker right away.
        raise TrainingInterrupted("worker shutting down before training started")

    run_dir.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        ownership.claim(run_dir, owner.workflow_id, owner.is_running)
    if is_complete(run_dir):  # overwrite requested
        _clear_finished_run(run_dir)
    digest = config_digest(config, data.fingerprint)
    resume = checkpoints.find_resume_checkpoint(run_dir, resume_hint, digest)
    if resume:
        metrics.RUNS_RESUMED.inc()
        log.info("training.resume", step=resume.step, checkpoint=str(resume.path))
        reporter.update(resumed_from_step=resume.step, latest_checkpoint=str(resume.path))

    use_cuda = config.use_gpu and torch.cuda.is_available()
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    max_steps = steps_per_epoch * config.num_epochs
    checkpoint_steps = config.checkpoint_steps or default_checkpoint_steps(max_steps)
    args = TrainingArguments(
        output_dir=str(checkpoints.attempt_dir(run_dir, attempt)),
        num_train_epochs=config.num_epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, 32),
        learning_rate=config.learning_rate,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not use_cuda,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        save_strategy="steps",
        save_steps=checkpoint_steps,
        save_total_limit=None,  # checkpoints.prune keeps the newest verified ones
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=max(1, min(50, max_steps // 20)),
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=use_cuda,
    )
    callback = _make_callback(reporter, stop, run_dir, attempt, digest)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=tracking.observe_predictions(_compute_accuracy)
        if tracking
        else _compute_accuracy,
        callbacks=[callback, *(tracking.callbacks() if tracking else [])],
    )
    trainer.remove_callback(PrinterCallback)  # our callback logs structured events instead
    log.info(
        "training.start",
        device="cuda" if use_cuda else "cpu",
        max_steps=max_steps,
        checkpoint_steps=checkpoint_steps,
        train_rows=len(train_set),
    )
    started = time.monotonic()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        if callback.cancelled:
            raise TrainingCancelled()
        if callback.interrupted:
            raise TrainingInterrupted(
                f"worker shutting down; checkpoint saved at step {trainer.state.global_step}"
            )
        log.info(
            "training.finished",
            global_step=trainer.state.global_step,
            resumed_from_step=resume.step if resume else None,
            steps_trained=trainer.state.global_step - (resume.step if resume else 0),
        )
        train_seconds = time.monotonic() - started
        if stop.cancel_requested():  # cancelled on the last step: do not evaluate or save
            raise TrainingCancelled()
        eval_accuracy = None
        if eval_set is not None:
            reporter.update(phase="evaluating")
            eval_metrics = trainer.evaluate()
            eval_accuracy = float(eval_metrics["eval_accuracy"])
            metrics.EVAL_ACCURACY.set(eval_accuracy)
            reporter.update(eval_accuracy=eval_accuracy)

        if stop.cancel_requested():  # cancelled (or superseded) during evaluation
            raise TrainingCancelled()
        reporter.update(phase="saving")
        samples_per_second = float(output.metrics.get("train_samples_per_second", 0.0))
        metrics.SAMPLES_PER_SECOND.set(samples_per_second)
        result = BertFineTuneResult(
            run_id=request.run_id,
            config=config,
            train_loss=float(output.training_loss),
            eval_accuracy=eval_accuracy,
            training_time_seconds=round(train_seconds, 3),
            num_parameters=int(model.num_parameters()),
            model_dir=str(run_dir),
            num_train_samples=len(train_set),
            train_samples_per_second=samples_per_second,
            label_names=data.label_names,
            resumed_from_step=resume.step if resume else None,
            num_eval_samples=len(eval_set) if eval_set is not None else 0,
            majority_baseline_accuracy=data.majority_baseline,
            notes=data.notes,
        )
        _save_final(
            run_dir,
            trainer,
            attempt,
            {
                "run_id": request.run_id,
                "config": config.model_dump(mode="json"),
                "data_fingerprint": data.fingerprint,
                "label_names": data.label_names,
                "metrics": {
                    "train_loss": result.train_loss,
                    "eval_accuracy": eval_accuracy,
                    "majority_baseline_accuracy": result.majority_baseline_accuracy,
                    "train_samples_per_second": samples_per_second,
                    "global_step": trainer.state.global_step,
                },
                "versions": _versions(),
                "attempt": attempt,
                "result": json.loads(result.model_dump_json()),
                "finished_at": time.time(),
            },
        )
        log.info("model.saved", run_dir=str(run_dir), eval_accuracy=eval_accuracy)
        return result
    finally:
        del trainer, model
        if use_cuda:
            torch.cuda.empty_cache()
