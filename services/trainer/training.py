"""One fine-tuning run, top to bottom: reuse, data, model, tokenize, train, evaluate, commit.

Runs in a worker thread (never on the event loop). Each stage is a small function of its own
(``stages.py``); progress goes to a ``ProgressReporter`` and one ``StopControl`` decides
between stages whether the attempt must stop (cancellation, worker shutdown).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.trainer import checkpoints, stages
from services.trainer.data import PreparedData, prepare_data
from services.trainer.progress import ProgressSink
from services.trainer.ranks import SINGLE_PROCESS, Ranks
from services.trainer.run_directory import RunDirectory
from services.trainer.stages import Attempt
from services.trainer.stopping import StopControl
from shared.logging import get_logger
from shared.model_loading import load_for_fine_tuning
from shared.onnx_export import commit_exporter
from shared.run_record import run_identity
from shared.types import BertFineTuneRequest, BertFineTuneResult

log = get_logger(__name__)


def fine_tune(
    request: BertFineTuneRequest,
    runs_root: Path,
    reporter: ProgressSink,
    stop: StopControl,
    attempt: Attempt | None = None,
    ranks: Ranks = SINGLE_PROCESS,
) -> BertFineTuneResult:
    attempt = attempt or Attempt()
    owner = attempt.owner
    config = request.config
    run = RunDirectory(runs_root, request.run_id)
    run.refuse_conflicting_rerun(request)

    # Data, and whether this exact work was already done (here or under another run id).
    reporter.update(phase="loading_data")
    data = prepare_data(config)
    identity = run_identity(config, data.fingerprint)
    done = ranks.decide(lambda: stages.reuse_finished_work(run, request, identity, owner))
    if done is not None:
        return done
    stop.check()

    # Model and tokenization.
    reporter.update(phase="loading_model")
    tokenizer, model = load_for_fine_tuning(config.model_name, data.label_names)
    reporter.update(phase="tokenizing")
    train_set, eval_set = stages.tokenize(data, tokenizer, config.max_seq_length)
    stop.check()

    # Claim the folder and find where to resume (the leader decides for every rank).
    def claim_and_find_resume() -> checkpoints.Checkpoint | None:
        run.claim(owner)
        digests = run.checkpoint_digests(identity, request, data.fingerprint)
        return run.resume_checkpoint(attempt.resume_hint, digests)

    resume = ranks.decide(claim_and_find_resume)

    # Train (up to the epoch the request stops at), then evaluate.
    session = stages.TrainingSession.build(
        request,
        run,
        attempt,
        identity,
        model,
        tokenizer,
        train_set,
        eval_set,
        reporter,
        stop,
        ranks,
    )
    try:
        trained = session.train(resume)
        stop.check(trained=True)
        evaluation = session.evaluate()
        stop.check(trained=True)

        # Pause (successive halving) or commit the model, run.json last.
        if session.pausing(trained):
            return stages.paused_result(request, run, data, trained, evaluation)
        reporter.update(phase="saving")
        record = stages.run_record(request, run, data, identity, trained, evaluation, attempt)
        if not ranks.is_leader:
            return record.result  # the leader commits the run; its result is the attempt's
        # The ONNX export is part of the commit: a completed run is never modified afterwards.
        run.commit(session.save_model, record, attempt.number, export=_exporter(data))
        log.info("model.saved", run_dir=str(run.path), eval_metrics=evaluation.metrics)
        return record.result
    finally:
        session.release()


def _exporter(data: PreparedData) -> Callable[[Path], None]:
    """Exports the committed model; texts from the run's own data gate the int8 graph."""
    sample = data.eval if data.eval is not None else data.train
    return commit_exporter(sample[: min(256, len(sample))]["text"])
