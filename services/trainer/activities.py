"""The ``fine_tune_bert`` activity: Temporal plumbing around ``training.fine_tune``.

A sync activity on the worker's thread pool. It heartbeats from a helper thread, resumes
from the newest verified checkpoint on retries, stops at the next step on cancellation or
worker shutdown, and turns every known problem into a typed ApplicationError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from services.trainer import ownership
from services.trainer.progress import SIGNAL_INTERVAL_SECONDS, ProgressReporter
from services.trainer.tracking import RunTracking, TrackingConfig, close_cancelled_run
from services.trainer.training import (
    Ownership,
    StopSignals,
    TrainingCancelled,
    TrainingInterrupted,
    fine_tune,
)
from shared import health, metrics
from shared.errors import WORKER_SHUTDOWN
from shared.logging import get_logger
from shared.runs import is_complete, resolve_run_dir
from shared.types import (
    DISCARD_RUN_ACTIVITY,
    FINE_TUNE_ACTIVITY,
    PROGRESS_SIGNAL,
    BertFineTuneRequest,
    BertFineTuneResult,
    TrainingProgress,
)

log = get_logger(__name__)

SIGNAL_TIMEOUT_SECONDS = 10.0
# Temporal terminates a workflow whose history passes 51,200 events. Past this many, the
# activity stops periodic progress signals and sends only phase and checkpoint changes.
HISTORY_EVENTS_BUDGET = 25_000
HISTORY_CHECK_EVERY_SIGNALS = 25


def _resume_hint() -> str | None:
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], dict):
        hint = details[0].get("latest_checkpoint")
        return hint if isinstance(hint, str) else None
    return None


class TrainingActivities:
    """Holds what the activity needs from the worker: the runs root and the event loop.

    ``progress_signal_interval`` bounds how stale the workflow's ``progress`` query may be
    while a run trains; each signal adds about four events to the workflow's history.
    """

    def __init__(
        self,
        runs_root: Path,
        loop: asyncio.AbstractEventLoop | None = None,
        client: Client | None = None,
        progress_signal_interval: float = SIGNAL_INTERVAL_SECONDS,
        step_stall_timeout: float | None = None,
        tracking: TrackingConfig = TrackingConfig(),
    ) -> None:
        self._runs_root = runs_root
        self._tracking = tracking
        self._loop = loop
        # The worker's client: ``activity.client()`` exists only in ``async def`` activities.
        self._client = client
        self._progress_signal_interval = progress_signal_interval
        self._step_stall_timeout = step_stall_timeout

    def _progress_signaller(self) -> Callable[[TrainingProgress], None] | None:
        if self._client is None or self._loop is None:
            log.warning("training.progress_query_disabled", reason="no client or event loop")
            return None
        info = activity.info()
        handle = self._client.get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        loop = self._loop
        state = {"sent": 0, "coarse": False, "milestone": ("", "")}

        def call(coroutine: Any) -> Any:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
            try:
                return future.result(timeout=SIGNAL_TIMEOUT_SECONDS)
            except concurrent.futures.TimeoutError:
                future.cancel()  # don't let signals pile up while the server is away
                raise

        def signal(progress: TrainingProgress) -> None:
            milestone = (progress.phase, progress.latest_checkpoint or "")
            if state["coarse"] and milestone == state["milestone"]:
                return  # history budget spent: only phase and checkpoint changes go out
            call(handle.signal(PROGRESS_SIGNAL, progress))
            state["milestone"] = milestone
            state["sent"] += 1
            if not state["coarse"] and state["sent"] % HISTORY_CHECK_EVERY_SIGNALS == 0:
                history_length = call(handle.describe()).history_length
                if history_length > HISTORY_EVENTS_BUDGET:
                    state["coarse"] = True
                    log.warning(
                        "training.progress_signals_reduced",
                        history_length=history_length,
                        budget=HISTORY_EVENTS_BUDGET,
                    )

        return signal

    @activity.defn(name=FINE_TUNE_ACTIVITY, no_thread_cancel_exception=True)
    def fine_tune_bert(self, request: BertFineTuneRequest) -> BertFineTuneResult:
        info = activity.info()
        # Attempts keep increasing across re-executions after preemptions (see the workflow),
        # which keeps checkpoint folders of superseded attempts ordered below newer ones.
        attempt = request.attempt_offset + info.attempt
        structlog.contextvars.bind_contextvars(run_id=request.run_id)
        reporter = ProgressReporter(
            TrainingProgress(run_id=request.run_id, attempt=attempt),
            signal=self._progress_signaller(),
            signal_interval=self._progress_signal_interval,
            stall_timeout=self._step_stall_timeout,
            on_stall=health.report_fatal,
        )
        stop = StopSignals(
            cancel_requested=activity.is_cancelled,
            shutdown_requested=activity.is_worker_shutdown,
        )
        tracking = RunTracking(
            self._tracking, request, attempt, self._runs_root / request.run_id, info.workflow_id
        )
        metrics.RUNS_STARTED.inc()
        metrics.RUNS_IN_FLIGHT.inc()
        metrics.HEARTBEAT_CLOCK.run_started()
        started = time.monotonic()
        outcome = "failed"
        result: BertFineTuneResult | None = None
        log.info("training.attempt_started", attempt=attempt)
        try:
            with reporter:
                result = fine_tune(
                    request,
                    self._runs_root,
                    reporter,
                    stop,
                    attempt=attempt,
                    resume_hint=_resume_hint(),
                    owner=Ownership(info.workflow_id, self._workflow_running),
                    tracking=tracking,
                )
                reporter.update(phase="succeeded")  # signalled on the way out
            outcome = "succeeded"
            metrics.RUNS_SUCCEEDED.inc()
            return result
        except TrainingCancelled:
            outcome = self._on_stopped(request)
            raise CancelledError("training cancelled") from None
        except TrainingInterrupted as err:
            outcome = "interrupted"
            metrics.RUNS_FAILED.labels(error_type=WORKER_SHUTDOWN).inc()
            log.warning("training.interrupted", reason=str(err))
            # Retryable on purpose: the next attempt resumes from the checkpoint just sealed.
            raise ApplicationError(str(err), type=WORKER_SHUTDOWN) from None
        except ApplicationError as err:
            metrics.RUNS_FAILED.labels(error_type=err.type or "ApplicationError").inc()
            log.warning("training.failed", error_type=err.type, error=err.message)
            raise
        except Exception as err:
            metrics.RUNS_FAILED.labels(error_type=type(err).__name__).inc()
            log.exception("training.crashed", error_type=type(err).__name__)
            raise
        finally:
            duration = time.monotonic() - started
            metrics.RUN_DURATION.labels(outcome=outcome).observe(duration)
            metrics.RUNS_IN_FLIGHT.dec()
            metrics.HEARTBEAT_CLOCK.run_finished()
            tracking.end(outcome, result)
            structlog.contextvars.unbind_contextvars("run_id")

    @activity.defn(name=DISCARD_RUN_ACTIVITY)
    async def discard_partial_run(self, run_id: str) -> bool:
        """Remove the output of a cancelled run unless it finished; True when removed.

        The workflow runs this as a local activity after a cancel, which covers a run
        cancelled while waiting between attempts (no attempt is running to clean up).
        Async, with all file system work on the loop's default executor, so it never waits
        behind a training run for the activity thread pool nor blocks the event loop.
        """
        return await asyncio.to_thread(
            self._discard_if_incomplete, run_id, activity.info().workflow_id
        )

    def _discard_if_incomplete(self, run_id: str, workflow_id: str) -> bool:
        """Remove an unfinished run folder, but never one another workflow is training."""
        run_dir = resolve_run_dir(self._runs_root, run_id)
        if not run_dir.is_dir() or is_complete(run_dir):
            return False
        if not ownership.owned_by(run_dir, workflow_id):
            log.info("training.partial_run_kept", owner=ownership.owner_of(run_dir))
            return False
        close_cancelled_run(self._tracking, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("training.partial_run_discarded", run_id=run_id, removed=str(run_dir))
        return True

    def _on_stopped(self, request: BertFineTuneRequest) -> str:
        """After a stop at a step boundary: clean up only when a user asked to cancel."""
        details = activity.cancellation_details()
        if details is not None and not details.cancel_requested:
            # Superseded (heartbeat timeout, activity gone): a newer attempt owns the folder.
            log.warning("training.superseded")
            return "superseded"
        metrics.RUNS_CANCELLED.inc()
        self._discard_if_incomplete(request.run_id, activity.info().workflow_id)
        log.info("training.cancelled")
        return "cancelled"

    def _workflow_running(self, workflow_id: str) -> bool:
        """Whether another workflow that claimed a run folder is still running."""
        if self._client is None or self._loop is None:
            return False  # cannot tell (tests without a client): the newer claim wins
        handle = self._client.get_workflow_handle(workflow_id)
        future = asyncio.run_coroutine_threadsafe(handle.describe(), self._loop)
        try:
            status = future.result(timeout=SIGNAL_TIMEOUT_SECONDS).status
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return status == WorkflowExecutionStatus.RUNNING
