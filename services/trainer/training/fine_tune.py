"""One fine-tuning run, top to bottom: reuse, data, model, tokenize, train, evaluate, commit.

Runs in a worker thread (never on the event loop). Each stage is a small function of its own
(``stages.py``); progress goes to a ``ProgressReporter`` and one ``StopControl`` decides
between stages whether the attempt must stop (cancellation, worker shutdown).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.trainer.distributed.ranks import SINGLE_PROCESS, Ranks
from services.trainer.run_folder import paths
from services.trainer.run_folder.run_directory import RunDirectory
from services.trainer.training import stages
from services.trainer.training.data import PreparedData, prepare_data
from services.trainer.training.progress_sink import ProgressSink
from services.trainer.training.resources import check_sequence_length, check_task_tokenizer
from services.trainer.training.stages import Attempt
from services.trainer.training.startup import freeze_startup_objects
from services.trainer.training.stopping import StopControl
from services.trainer.training.token_cache import TokenCache
from shared.logging import get_logger
from shared.model_loading import load_for_fine_tuning
from shared.onnx_export import MAX_CHECK_TEXTS, commit_exporter, write_check_texts
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
    """Train (or reuse) one run. Its local paths may name only ``attempt.path_roots``
    (default: the working directory and ``runs_root``)."""
    freeze_startup_objects()  # once per process (see there)
    attempt = attempt or Attempt()
    path_roots = attempt.path_roots or paths.default_roots(runs_root)
    config = request.config
    paths.confine_model_name(config.model_name, path_roots)
    run = RunDirectory(runs_root, request.run_id)
    run.refuse_conflicting_rerun(request)

    # Data, and whether this exact work was already done (here or under another run id).
    reporter.update(phase="loading_data")
    data = prepare_data(config, path_roots)
    identity = run_identity(config, data.fingerprint)
    done = ranks.decide(lambda: stages.reuse_finished_work(run, request, identity, attempt))
    if done is not None:
        return done
    stop.check()

    # Model and tokenization.
    reporter.update(phase="loading_model")
    tokenizer, model = load_for_fine_tuning(config.model_name, data.label_names, config.task)
    check_sequence_length(config.max_seq_length, config.model_name, model, tokenizer)
    check_task_tokenizer(config, tokenizer)
    train_set, eval_set = stages.tokenize_watched(
        data, tokenizer, config.max_seq_length, reporter, stop, TokenCache(runs_root)
    )
    stop.check()

    # Claim the folder (from here on only this attempt writes it: see ``fencing``) and find
    # where to resume; the leader decides for every rank.
    claim = ranks.decide(
        lambda: stages.claim_or_reuse(run, request, attempt, identity, data.fingerprint)
    )
    if claim.finished is not None:
        return claim.finished

    # Train (up to the epoch the request stops at, within the device's memory), evaluate.
    build = stages.SessionBuilder(
        request, run, attempt, identity, model, tokenizer, train_set, eval_set,
        data.label_names, reporter, stop, ranks,
    )  # fmt: skip
    try:
        session, trained = stages.train(build, claim)
    except BaseException:
        _end_uploads(run, stop)
        raise
    try:
        stop.check(trained=True)
        evaluation = session.evaluate()
        stop.check(trained=True)

        # Pause (successive halving) or commit the model (the best epoch's, when
        # keep_best_epoch), run.json last.
        if session.pausing(trained):
            return stages.paused_result(request, run, data, trained, evaluation)
        evaluation = session.keep_best_epoch(evaluation)
        reporter.update(phase="saving")
        stages.refuse_diverged(request, trained, evaluation)  # TrainingDiverged: no commit
        record = stages.run_record(request, run, data, identity, trained, evaluation, attempt)
        if ranks.is_leader:  # the leader commits the run; its result is every rank's
            export = _exporter(data, request)
            run.commit(session.save_model, record, attempt.number, export=export)
            log.info("model.saved", run_dir=str(run.path), eval_metrics=evaluation.metrics)
        return record.result
    finally:
        session.release()
        _end_uploads(run, stop)


def _end_uploads(run: RunDirectory, stop: StopControl) -> None:
    """An attempt that ends without its commit (preempted, paused at a rung, failed) leaves
    its newest checkpoint in the runs store for whichever trainer runs it next; a cancelled
    one does not wait (its checkpoints are discarded)."""
    run.close_uploads(wait=not (stop.cancelled or stop.cancel_requested()))


def _exporter(data: PreparedData, request: BertFineTuneRequest) -> Callable[[Path], None]:
    """What the commit adds to the model files for its ONNX export: the export itself
    (``export_at_commit``: requests from workflows that predate the export workflow), or the
    texts from the run's own data (with their second texts, for pairs) that gate its int8
    graph when ``BertExportWorkflow`` exports the run after the commit, off the training's
    critical path; a sweep's trial says so (only the sweep's best is exported)."""
    sample = data.eval if data.eval is not None else data.train
    rows = sample[: min(MAX_CHECK_TEXTS, len(sample))]
    texts = rows["text"]
    pairs = rows.get("text_pair")
    if request.export_at_commit:
        return commit_exporter(texts, pairs)
    context = request.context
    sweep = context.name if context is not None and context.kind == "sweep" else None
    return lambda staging: write_check_texts(staging, texts, pairs, sweep=sweep)
