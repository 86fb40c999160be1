"""What every activity does around its work: ids on every log line, timing, an outcome label
for metrics, failure logging. One context manager, so both workers count the same way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import structlog
from temporalio.exceptions import ApplicationError, CancelledError

from shared import metrics
from shared.logging import get_logger

log = get_logger(__name__)


@dataclass
class Outcome:
    """How an activity ended. The activity may name outcomes that are not errors (a
    preemption, a superseded attempt); ``activity_scope`` fills in the rest."""

    label: str | None = None
    error_type: str | None = None


class Recorder(Protocol):
    """The metrics of one kind of activity."""

    def started(self) -> None: ...

    def finished(self, outcome: Outcome, seconds: float) -> None: ...


@contextmanager
def activity_scope(recorder: Recorder, event_prefix: str, **ids: str) -> Iterator[Outcome]:
    """Bind ``ids`` to every log line, time the body, label its outcome, log failures.

    ``ApplicationError``s are expected failures (their type is the label, logged as a
    warning); other exceptions are crashes (logged with their traceback). A cancellation is
    not a failure.
    """
    structlog.contextvars.bind_contextvars(**ids)
    recorder.started()
    started = time.monotonic()
    outcome = Outcome()
    try:
        yield outcome
    except ApplicationError as err:
        outcome.error_type = err.type or "ApplicationError"
        log.warning(f"{event_prefix}.failed", error_type=err.type, error=err.message)
        raise
    except (CancelledError, asyncio.CancelledError):
        outcome.label = outcome.label or "cancelled"
        raise
    except Exception as err:
        outcome.error_type = type(err).__name__
        log.exception(f"{event_prefix}.crashed", error_type=outcome.error_type)
        raise
    finally:
        recorder.finished(outcome, time.monotonic() - started)
        structlog.contextvars.unbind_contextvars(*ids)


class TrainingRecorder:
    """``bert_training_*``: runs started, in flight, succeeded, failed by type; durations."""

    def started(self) -> None:
        metrics.RUNS_STARTED.inc()
        metrics.RUNS_IN_FLIGHT.inc()
        metrics.HEARTBEAT_CLOCK.run_started()

    def finished(self, outcome: Outcome, seconds: float) -> None:
        label = outcome.label or ("failed" if outcome.error_type else "succeeded")
        if outcome.error_type:
            metrics.RUNS_FAILED.labels(error_type=outcome.error_type).inc()
        elif label == "succeeded":
            metrics.RUNS_SUCCEEDED.inc()
        metrics.RUN_DURATION.labels(outcome=label).observe(seconds)
        metrics.RUNS_IN_FLIGHT.dec()
        metrics.HEARTBEAT_CLOCK.run_finished()


class ExportRecorder:
    """``bert_training_export*``: exports in flight, by outcome, their durations."""

    def started(self) -> None:
        metrics.EXPORTS_IN_FLIGHT.inc()

    def finished(self, outcome: Outcome, seconds: float) -> None:
        label = outcome.error_type or outcome.label or "exported"
        metrics.EXPORTS.labels(outcome=label).inc()
        metrics.EXPORT_DURATION.labels(outcome=label).observe(seconds)
        metrics.EXPORTS_IN_FLIGHT.dec()


# The warm-only local activity found its model not loaded: the request is served by the
# regular activity that follows, so this attempt is neither a success nor a failure.
COLD_OUTCOME = "cold"


class InferenceRecorder:
    """``bert_inference_*``: requests by outcome (``success`` or the error type), latency."""

    def started(self) -> None:
        """Requests are counted when they end, with their outcome."""

    def finished(self, outcome: Outcome, seconds: float) -> None:
        if outcome.label == COLD_OUTCOME and outcome.error_type is None:
            return
        label = outcome.error_type or outcome.label or "success"
        metrics.INFERENCE_REQUESTS.labels(outcome=label).inc()
        metrics.INFERENCE_LATENCY.observe(seconds)
