"""The ``run_bert_inference`` activity: batched, length-sorted predictions of the run's task."""

from __future__ import annotations

import time
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from services.inferencer.classifiers import BatchCallback
from services.inferencer.model_cache import ModelCache
from services.inferencer.shadow import ShadowScorer
from shared import metrics
from shared.aliases import draw_for, route_request
from shared.errors import INVALID_CONFIG, MODEL_COLD, RUN_NOT_FOUND, failure
from shared.instrumentation import COLD_OUTCOME, InferenceRecorder, activity_scope
from shared.logging import get_logger
from shared.model_loading import torch_available
from shared.runs import ServedRun, resolve_served_run
from shared.storage.run_store import NotDownloaded
from shared.tasks import MULTI_LABEL, SINGLE_LABEL, TOKEN_CLASSIFICATION
from shared.types import (
    INFERENCE_ACTIVITY,
    INFERENCE_WARM_ACTIVITY,
    MAX_INFERENCE_PAYLOAD_BYTES,
    BertInferenceRequest,
    BertInferenceResult,
    inference_payload_bytes,
)

log = get_logger(__name__)


def _progress_callback() -> BatchCallback:
    """Per batch: record its size and, in a regular activity, heartbeat the texts done.

    Local activities (the small-request path) cannot heartbeat; they are short by design.
    """
    heartbeat = activity.in_activity() and not activity.info().is_local

    def on_batch(done: int, size: int) -> None:
        metrics.INFERENCE_BATCH_SIZE.observe(size)
        log.debug("inference.batch", size=size, done=done)
        if heartbeat:
            activity.heartbeat(done)

    return on_batch


def served_run(runs_root: Path, run_id: str, alias: str | None, download: bool = True) -> ServedRun:
    """The run to serve; for a request by alias, an error names the alias and its fix.
    ``download`` False: ``NotDownloaded`` for a run of an object store not cached here yet."""
    try:
        return resolve_served_run(runs_root, run_id, download=download)
    except ApplicationError as err:
        if alias is None or err.type != RUN_NOT_FOUND:
            raise
        raise failure(
            RUN_NOT_FOUND,
            f"alias @{alias} points at run {run_id!r}, which cannot be served: {err.message}; "
            f"or point the alias at another run: `bert-finetune promote RUN_ID {alias}`",
        ) from None


def check_text_pairs(served: ServedRun, text_pairs: list[str] | None) -> None:
    """``text_pairs`` are required exactly when the run was trained on pairs
    (``text_pair_column``); ``InvalidConfig`` naming the fix otherwise."""
    column = served.record.config.text_pair_column
    if column is not None and text_pairs is None:
        raise failure(
            INVALID_CONFIG,
            f"text_pairs: run {served.run_id!r} was trained on text pairs (text_pair_column "
            f"{column[:100]!r}); give text_pairs, the second text of each pair, one per text",
        )
    if column is None and text_pairs is not None:
        raise failure(
            INVALID_CONFIG,
            f"text_pairs: run {served.run_id!r} was trained on single texts "
            f"({served.record.config.task}, no text_pair_column); remove text_pairs",
        )


def check_result_size(request: BertInferenceRequest, task: str, label_names: list[str]) -> None:
    """The result fits the payload budget with what the run's task adds per text: every
    label's probability (multi-label), a tag per word and the entities (token
    classification). The workflow counted the texts and pairs only."""
    size = inference_payload_bytes(
        request.texts,
        request.text_pairs,
        labels=label_names if task == MULTI_LABEL else None,
        per_word=task == TOKEN_CLASSIFICATION,
    )
    if size > MAX_INFERENCE_PAYLOAD_BYTES:
        what = (
            f"a probability for each of its {len(label_names)} labels"
            if task == MULTI_LABEL
            else "a tag per word and the entities"
        )
        raise failure(
            INVALID_CONFIG,
            f"texts: {len(request.texts)} texts make a result of about {size} bytes with "
            f"{what} ({task}), over the {MAX_INFERENCE_PAYLOAD_BYTES}-byte limit per request; "
            "split them over several requests (`bert-finetune predict --file` does this)",
        )


def serving_device(use_gpu: bool) -> str:
    """``cuda`` when the request asks for a GPU and this worker has one, else ``cpu``.

    The slim inferencer image has no PyTorch: there a GPU request is served on the CPU (from
    the run's ONNX export), exactly as on a PyTorch worker without a visible GPU."""
    if not use_gpu or not torch_available():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class InferenceActivities:
    """``shadow``: scores requests by an alias with a shadow run (``shadow.py``)."""

    def __init__(
        self, runs_root: Path, cache: ModelCache, shadow: ShadowScorer | None = None
    ) -> None:
        self._runs_root = runs_root
        self._cache = cache
        self._shadow = shadow if shadow is not None else ShadowScorer(runs_root, cache)

    @activity.defn(name=INFERENCE_ACTIVITY)
    def run_bert_inference(self, request: BertInferenceRequest) -> BertInferenceResult:
        return self._infer(request, warm_only=False)

    @activity.defn(name=INFERENCE_WARM_ACTIVITY)
    def run_bert_inference_warm(self, request: BertInferenceRequest) -> BertInferenceResult:
        """``run_bert_inference`` if the model is loaded on this worker; else ``ModelCold`` at
        once, and the model starts loading here in the background (the workflow runs the
        regular activity meanwhile)."""
        return self._infer(request, warm_only=True)

    def _infer(self, request: BertInferenceRequest, *, warm_only: bool) -> BertInferenceResult:
        named = request.run_id or f"@{request.alias}"
        with activity_scope(InferenceRecorder(), "inference", run_id=named) as outcome:
            started = time.monotonic()
            # An alias is resolved on every request, so a re-promotion is served at once; its
            # canary answers when the execution's draw falls in the canary's share. The draw
            # comes from the workflow's run id: one per execution, the same for its local
            # activity, the regular one after a cold model and every retry (and no field in
            # the activity's input that a worker of an older release would refuse).
            alias = request.alias
            if alias is not None and request.route_draw is None and activity.in_activity():
                draw = draw_for(activity.info().workflow_run_id or activity.info().activity_id)
                request = request.model_copy(update={"route_draw": draw})
            request, route = route_request(self._runs_root, request)
            assert request.run_id is not None  # an alias is resolved to its run id above
            # A run that reused another run's model is served from that run's folder.
            device = serving_device(request.use_gpu)
            try:
                # The local activity never downloads from a runs store (a download may
                # outlast it): a commit not cached here is cold, and the regular activity
                # downloads it.
                served: ServedRun | None = served_run(
                    self._runs_root, request.run_id, alias, download=not warm_only
                )
            except NotDownloaded:
                served = None
            loaded = None
            if served is not None:
                check_text_pairs(served, request.text_pairs)
                loaded = (
                    self._cache.peek(served.model_dir, device)
                    if warm_only
                    else self._cache.get(served.model_dir, device)
                )
            if loaded is not None:
                classifier = loaded.classifier
                task = classifier.task
                if task != SINGLE_LABEL:
                    check_result_size(request, task, loaded.label_names)
                predictions = classifier.predict(
                    request.texts,
                    request.max_seq_length,
                    request.batch_size,
                    _progress_callback(),
                    request.text_pairs,
                )
                metrics.INFERENCE_TEXTS.inc(len(request.texts))
                log.info(
                    "inference.done",
                    run_id=request.run_id,
                    texts=len(request.texts),
                    task=task,
                    backend=classifier.backend,
                    seconds=round(time.monotonic() - started, 4),
                )
                if alias is not None and route is not None and route.shadow_run_id is not None:
                    # Never on a retry's critical path: queued and returned at once.
                    self._shadow.submit(
                        alias,
                        route.shadow_run_id,
                        task,
                        request.texts,
                        request.text_pairs,
                        request.max_seq_length,
                        predictions,
                    )
                single = task == SINGLE_LABEL
                return BertInferenceResult(
                    run_id=request.run_id,
                    texts=request.texts,
                    labels=[p["label_id"] for p in predictions] if single else [],
                    label_names=[p["label"] for p in predictions] if single else [],
                    confidences=[p["score"] for p in predictions] if single else [],
                    task=task,
                    predictions=predictions,
                )
            # Cold: not a failed request (the regular activity serves it), so not counted.
            outcome.label = COLD_OUTCOME
            if served is not None:
                self._cache.warm(served.model_dir, device)
            log.info("inference.cold", run_id=request.run_id, device=device)
        raise ApplicationError(
            f"run {request.run_id!r} is not loaded on this worker yet; it is loading",
            type=MODEL_COLD,
            non_retryable=True,
            # Expected, not a failure: the SDK logs it at debug and leaves it out of its
            # failure metrics.
            category=ApplicationErrorCategory.BENIGN,
        )
