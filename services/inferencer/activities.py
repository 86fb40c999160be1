"""The ``run_bert_inference`` activity: batched, length-sorted classification of texts."""

from __future__ import annotations

import time
from pathlib import Path

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.inferencer.model_cache import LoadedModel, ModelCache
from shared import metrics
from shared.aliases import resolve_request_alias
from shared.logging import get_logger
from shared.runs import require_complete_run
from shared.types import INFERENCE_ACTIVITY, BertInferenceRequest, BertInferenceResult

log = get_logger(__name__)


def classify(
    loaded: LoadedModel, texts: list[str], max_seq_length: int, batch_size: int
) -> tuple[list[int], list[float]]:
    """Labels and softmax confidences in input order; batches hold texts of similar length."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    labels = [0] * len(texts)
    confidences = [0.0] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            encoded = loaded.tokenizer(
                [texts[i] for i in indices],
                truncation=True,
                max_length=max_seq_length,
                padding=True,
                return_tensors="pt",
            ).to(loaded.device)
            probabilities = torch.softmax(loaded.model(**encoded).logits.float(), dim=-1)
            best = probabilities.max(dim=-1)
            for position, index in enumerate(indices):
                labels[index] = int(best.indices[position])
                confidences[index] = float(best.values[position])
            metrics.INFERENCE_BATCH_SIZE.observe(len(indices))
            if activity.in_activity():
                activity.heartbeat(start + len(indices))
            log.debug("inference.batch", size=len(indices))
    return labels, confidences


class InferenceActivities:
    def __init__(self, runs_root: Path, cache: ModelCache) -> None:
        self._runs_root = runs_root
        self._cache = cache

    @activity.defn(name=INFERENCE_ACTIVITY)
    def run_bert_inference(self, request: BertInferenceRequest) -> BertInferenceResult:
        started = time.monotonic()
        outcome = "success"
        structlog.contextvars.bind_contextvars(run_id=request.run_id)
        try:
            # An alias is resolved on every request, so a re-promotion is served at once.
            request = resolve_request_alias(self._runs_root, request)
            run_dir = require_complete_run(self._runs_root, request.run_id)
            device = "cpu"
            if request.use_gpu:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            loaded = self._cache.get(run_dir, device)
            labels, confidences = classify(
                loaded, request.texts, request.max_seq_length, request.batch_size
            )
            metrics.INFERENCE_TEXTS.inc(len(request.texts))
            log.info(
                "inference.done",
                run_id=request.run_id,
                texts=len(request.texts),
                seconds=round(time.monotonic() - started, 4),
            )
            return BertInferenceResult(
                run_id=request.run_id,
                texts=request.texts,
                labels=labels,
                label_names=[loaded.label_names[label] for label in labels],
                confidences=confidences,
            )
        except ApplicationError as err:
            outcome = err.type or "ApplicationError"
            raise
        except Exception as err:
            outcome = type(err).__name__
            log.exception("inference.crashed", run_id=request.run_id)
            raise
        finally:
            metrics.INFERENCE_REQUESTS.labels(outcome=outcome).inc()
            metrics.INFERENCE_LATENCY.observe(time.monotonic() - started)
            structlog.contextvars.unbind_contextvars("run_id")
