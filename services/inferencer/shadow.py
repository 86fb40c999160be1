"""Shadow rollouts: an alias's shadow run scores its requests in the background.

After a request by alias is answered (HTTP or ``run_bert_inference``), the same texts go to
the alias's shadow run on one background thread of this worker; its predictions are compared
with the answer and counted (``bert_inference_shadow_compared_total`` /
``bert_inference_shadow_agreed_total`` by task). The answer never waits for it and never
changes: the request has returned by then. A worker keeps at most ``max_pending`` requests
queued for its shadow; beyond that they are skipped and counted (``reason="busy"``), so a
slow shadow run never builds a backlog or competes for more than one thread.

Agreement per task (``agreement``): single-label, the same label; multi-label, the same set
of labels; regression, scores within ``SCORE_TOLERANCE`` (absolute, or relative to the
larger score); token classification, each word's tag (words are the unit there).
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.inferencer.model_cache import ModelCache
from shared import metrics
from shared.errors import INVALID_CONFIG, failure
from shared.logging import get_logger
from shared.runs import resolve_served_run
from shared.tasks import MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION

log = get_logger(__name__)

# Regression scores agree within this distance, or this share of the larger score.
SCORE_TOLERANCE = 0.05
# The shadow classifies on CPU (ONNX Runtime for a run with an export), like HTTP requests.
DEVICE = "cpu"
SHADOW_BATCH_SIZE = 32


def _same_score(served: float, shadow: float) -> bool:
    return math.isclose(served, shadow, rel_tol=SCORE_TOLERANCE, abs_tol=SCORE_TOLERANCE)


def agreement(
    task: str, served: Sequence[dict[str, Any]], shadow: Sequence[dict[str, Any]]
) -> tuple[int, int]:
    """(compared, agreed) between the answer's predictions and the shadow's, per task: texts
    (the same label, label set, or a score within ``SCORE_TOLERANCE``), or words (the same
    tag) for token classification."""
    if task == TOKEN_CLASSIFICATION:
        compared = agreed = 0
        for first, second in zip(served, shadow, strict=True):
            compared += len(first["tags"])
            agreed += sum(a == b for a, b in zip(first["tags"], second["tags"], strict=True))
        return compared, agreed
    if task == MULTI_LABEL:
        same = [set(a["labels"]) == set(b["labels"]) for a, b in zip(served, shadow, strict=True)]
    elif task == REGRESSION:
        same = [_same_score(a["score"], b["score"]) for a, b in zip(served, shadow, strict=True)]
    else:
        same = [a["label"] == b["label"] for a, b in zip(served, shadow, strict=True)]
    return len(same), sum(same)


class ShadowScorer:
    """Scores answered requests with a shadow run on one background thread (see above)."""

    def __init__(self, runs_root: Path, cache: ModelCache, max_pending: int = 4) -> None:
        self._runs_root = runs_root
        self._cache = cache
        self._max_pending = max_pending
        self._pending = 0
        self._idle = threading.Condition()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")

    def submit(
        self,
        alias: str,
        shadow_run_id: str,
        task: str,
        texts: list[str],
        text_pairs: list[str] | None,
        max_seq_length: int,
        answered: list[dict[str, Any]],
    ) -> bool:
        """Queue the request for the shadow run; returns at once (False: skipped, busy)."""
        with self._idle:
            if self._pending >= self._max_pending:
                metrics.SHADOW_SKIPPED.labels(reason="busy").inc()
                return False
            self._pending += 1
        context = contextvars.copy_context()  # the request's log context goes along
        self._pool.submit(
            context.run,
            self._score,
            alias,
            shadow_run_id,
            task,
            texts,
            text_pairs,
            max_seq_length,
            answered,
        )
        return True

    def _score(
        self,
        alias: str,
        shadow_run_id: str,
        task: str,
        texts: list[str],
        text_pairs: list[str] | None,
        max_seq_length: int,
        answered: list[dict[str, Any]],
    ) -> None:
        try:
            served = resolve_served_run(self._runs_root, shadow_run_id)
            classifier = self._cache.get(served.model_dir, DEVICE).classifier
            if classifier.task != task:
                raise failure(
                    INVALID_CONFIG,
                    f"shadow run {shadow_run_id!r} does {classifier.task}, the answer {task}",
                )
            predictions = classifier.predict(
                texts, max_seq_length, SHADOW_BATCH_SIZE, lambda done, size: None, text_pairs
            )
            compared, agreed = agreement(task, answered, predictions)
            metrics.SHADOW_COMPARED.labels(task=task).inc(compared)
            metrics.SHADOW_AGREED.labels(task=task).inc(agreed)
            log.debug(
                "shadow.scored",
                alias=alias,
                shadow_run_id=shadow_run_id,
                compared=compared,
                agreed=agreed,
            )
        except Exception as err:  # never the request's problem: counted and logged
            metrics.SHADOW_SKIPPED.labels(reason="failed").inc()
            log.warning(
                "shadow.failed",
                alias=alias,
                shadow_run_id=shadow_run_id,
                error=f"{type(err).__name__}: {str(err)[:300]}",
            )
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or scoring (graceful shutdown, tests)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)
