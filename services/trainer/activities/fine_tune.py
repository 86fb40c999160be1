"""The ``fine_tune_bert`` activity: Temporal plumbing around ``training.fine_tune``.

A sync activity on the worker's thread pool. It heartbeats from a helper thread, resumes
from the newest verified checkpoint on retries, stops at the next step on cancellation or
worker shutdown, and turns every known problem into a typed ApplicationError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from services.trainer.activities.progress import (
    HISTORY_CHECK_EVERY_SIGNALS,
    HISTORY_EVENTS_BUDGET,
    SIGNAL_INTERVAL_SECONDS,
    ProgressChannel,
    ProgressReporter,
    ProgressSignaller,
)
from services.trainer.activities.watchdog import PhaseWatchdog
from services.trainer.run_folder import checkpoints, ownership
from services.trainer.run_folder.fencing import Superseded
from services.trainer.run_folder.paths import LocalPathRoots, default_roots
from services.trainer.run_folder.run_directory import Ownership, RunDirectory
from services.trainer.tracking.trackers import RunTracking, TrackingConfig, close_cancelled_run
from services.trainer.training.fine_tune import fine_tune
from services.trainer.training.stages import Attempt
from services.trainer.training.stopping import StopControl, TrainingCancelled, TrainingInterrupted
from shared import health, metrics
from shared.errors import (
    ATTEMPT_SUPERSEDED,
    RESOURCE_EXHAUSTED,
    TRAINING_DIVERGED,
    WORKER_SHUTDOWN,
)
from shared.instrumentation import TrainingRecorder, activity_scope
from shared.logging import get_logger
from shared.manifests import CheckpointManifest, ManifestError
from shared.runs import is_complete, resolve_run_dir
from shared.storage import store_for
from shared.types import (
    CHECKPOINT_PROGRESS_ACTIVITY,
    DISCARD_RUN_ACTIVITY,
    FINE_TUNE_ACTIVITY,
    PROGRESS_SIGNAL,
    BertFineTuneRequest,
    BertFineTuneResult,
    CheckpointProgress,
    TrainingProgress,
)

log = get_logger(__name__)

T = TypeVar("T")

SIGNAL_TIMEOUT_SECONDS = 10.0


class Trainer(Protocol):
    """Trains one attempt: ``training.fine_tune`` in this process, or
    ``launcher.DistributedTraining`` over several."""

    def __call__(
        self,
        request: BertFineTuneRequest,
        runs_root: Path,
        reporter: ProgressReporter,
        stop: StopControl,
        attempt: Attempt | None = None,
    ) -> BertFineTuneResult: ...


class WorkflowGateway(Protocol):
    """What the training activity asks of Temporal besides heartbeats."""

    def progress_channel(self, workflow_id: str, run_id: str | None) -> ProgressChannel: ...

    def is_running(self, workflow_id: str) -> bool: ...


class TemporalGateway:
    """The worker's client, used from activity threads through the worker's event loop
    (``activity.client()`` exists only in ``async def`` activities)."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=SIGNAL_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()  # don't let calls pile up while the server is away
            raise

    def progress_channel(self, workflow_id: str, run_id: str | None) -> ProgressChannel:
        handle = self._client.get_workflow_handle(workflow_id, run_id=run_id)
        gateway = self

        class Channel:
            def signal(self, progress: TrainingProgress) -> None:
                gateway.call(handle.signal(PROGRESS_SIGNAL, progress))

            def history_length(self) -> int:
                return gateway.call(handle.describe()).history_length

        return Channel()

    def is_running(self, workflow_id: str) -> bool:
        """Whether a workflow (one that claimed a run folder) is still running."""
        try:
            description = self.call(self._client.get_workflow_handle(workflow_id).describe())
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == WorkflowExecutionStatus.RUNNING


def _resume_hint() -> str | None:
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], dict):
        hint = details[0].get("latest_checkpoint")
        return hint if isinstance(hint, str) else None
    return None


def _workflow_id() -> str:
    """The id of the workflow running this activity (these activities never run standalone)."""
    workflow_id = activity.info().workflow_id
    if workflow_id is None:
        raise ApplicationError("training activities run only inside a workflow", type="NoWorkflow")
    return workflow_id


def _progress_target(request: BertFineTuneRequest) -> tuple[str, str | None]:
    """The workflow receiving this run's progress: the request's, else the caller."""
    if request.progress_workflow_id:
        return request.progress_workflow_id, None
    return _workflow_id(), activity.info().workflow_run_id


class TrainingActivities:
    """Holds what the activity needs from the worker: the runs root and Temporal access.

    ``progress_signal_interval`` bounds how stale the workflow's ``progress`` query may be
    while a run trains; each signal adds about four events to the workflow's history, and
    past ``progress_history_budget`` events only milestones are signalled.
    """

    def __init__(
        self,
        runs_root: Path,
        gateway: WorkflowGateway,
        progress_signal_interval: float = SIGNAL_INTERVAL_SECONDS,
        progress_history_budget: int = HISTORY_EVENTS_BUDGET,
        progress_history_check_every: int = HISTORY_CHECK_EVERY_SIGNALS,
        phase_timeouts: Mapping[str, float] | None = None,
        checkpoint_interval_seconds: float = checkpoints.DEFAULT_INTERVAL_SECONDS,
        local_path_roots: LocalPathRoots | None = None,
        train: Trainer = fine_tune,
        tracking: TrackingConfig = TrackingConfig(),
    ) -> None:
        self._runs_root = runs_root
        self._tracking = tracking
        self._gateway = gateway
        self._progress_signal_interval = progress_signal_interval
        self._history_budget = progress_history_budget
        self._history_check_every = progress_history_check_every
        self._phase_timeouts = dict(phase_timeouts) if phase_timeouts else None
        self._checkpoint_interval = checkpoint_interval_seconds
        self._path_roots = local_path_roots or default_roots(runs_root)
        self._train = train

    @activity.defn(name=FINE_TUNE_ACTIVITY, no_thread_cancel_exception=True)
    def fine_tune_bert(self, request: BertFineTuneRequest) -> BertFineTuneResult:
        info = activity.info()
        # Attempts keep increasing across re-executions after preemptions (see the workflow),
        # which keeps checkpoint folders of superseded attempts ordered below newer ones.
        number = request.attempt_offset + info.attempt
        tracking = RunTracking(
            self._tracking, request, number, self._runs_root / request.run_id, _workflow_id()
        )
        attempt = Attempt(
            number=number,
            resume_hint=_resume_hint(),
            owner=Ownership(_workflow_id(), self._gateway.is_running),
            workflow_run_id=info.workflow_run_id or "",
            path_roots=self._path_roots,
            checkpoint_interval_seconds=self._checkpoint_interval,
            tracking=tracking,
        )
        signaller = ProgressSignaller(
            self._gateway.progress_channel(*_progress_target(request)),
            history_budget=self._history_budget,
            check_every=self._history_check_every,
        )
        reporter = ProgressReporter(
            TrainingProgress(run_id=request.run_id, attempt=attempt.number),
            signal=signaller,
            signal_interval=self._progress_signal_interval,
            watchdog=PhaseWatchdog(self._phase_timeouts) if self._phase_timeouts else None,
            on_stall=health.report_fatal,
        )
        stop = StopControl(activity.is_cancelled, activity.is_worker_shutdown)
        with activity_scope(TrainingRecorder(), "training", run_id=request.run_id) as outcome:
            log.info("training.attempt_started", attempt=attempt.number)
            result: BertFineTuneResult | None = None
            try:
                with reporter:
                    result = self._train(request, self._runs_root, reporter, stop, attempt)
                    reporter.update(phase="paused" if result.paused else "succeeded")
                return result
            except TrainingCancelled:
                outcome.label = self._on_stopped(request)
                raise CancelledError("training cancelled") from None
            except TrainingInterrupted as err:
                outcome.label = "interrupted"
                log.warning("training.interrupted", reason=str(err))
                # Retryable on purpose: the next attempt resumes from the checkpoint just sealed.
                raise ApplicationError(str(err), type=WORKER_SHUTDOWN) from None
            except ApplicationError as err:
                # It will never fit, or it diverged (its checkpoints hold NaN): leave nothing.
                if err.type in (RESOURCE_EXHAUSTED, TRAINING_DIVERGED):
                    discard_if_incomplete(self._runs_root, request.run_id, _workflow_id())
                raise
            except Superseded as err:
                outcome.label = "superseded"
                log.warning("fence.superseded", reason=str(err))
                raise ApplicationError(str(err), type=ATTEMPT_SUPERSEDED) from None
            finally:
                # No result and no label: an error is on its way out (the scope labels it).
                tracking.end(outcome.label or ("failed" if result is None else "succeeded"), result)

    def _on_stopped(self, request: BertFineTuneRequest) -> str:
        """After a stop at a step boundary: clean up only when a user asked to cancel."""
        details = activity.cancellation_details()
        if details is not None and not details.cancel_requested:
            # Superseded (heartbeat timeout, activity gone): a newer attempt owns the folder.
            log.warning("training.superseded")
            return "superseded"
        metrics.RUNS_CANCELLED.inc()
        discard_if_incomplete(self._runs_root, request.run_id, _workflow_id(), self._tracking)
        log.info("training.cancelled")
        return "cancelled"


def discard_if_incomplete(
    runs_root: Path, run_id: str, workflow_id: str, tracking: TrackingConfig = TrackingConfig()
) -> bool:
    """Remove an unfinished run folder, but never one another workflow is training.

    A complete run is never removed: when this workflow was overwriting it, only the
    overwrite's leftovers go and the run stays as it was, still served (``swap.py``).
    With ``tracking``, the run's MLflow run is closed as KILLED too (nobody else will)."""
    run_dir = resolve_run_dir(runs_root, run_id)
    discard_store_leftovers(runs_root, run_id, workflow_id)
    if not run_dir.is_dir():
        return False
    if is_complete(run_dir):
        if ownership.owner_of(run_dir) == workflow_id:
            close_cancelled_run(tracking, run_dir)
            RunDirectory(runs_root, run_id).abandon_replacement(workflow_id)
        return False
    if not ownership.owned_by(run_dir, workflow_id):
        log.info("training.partial_run_kept", owner=ownership.owner_of(run_dir))
        return False
    close_cancelled_run(tracking, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("training.partial_run_discarded", run_id=run_id, removed=str(run_dir))
    return True


def discard_store_leftovers(runs_root: Path, run_id: str, workflow_id: str) -> None:
    """With an object store: the uploads no commit names (attempts of this workflow killed
    or cancelled mid-upload), unless another workflow holds the run. Its committed files
    and ``run.json`` stay."""
    store = store_for(runs_root)
    if store is None:
        return
    holder = store.holder(run_id)
    if holder is None or holder.workflow_id == workflow_id:
        dropped = store.drop_orphans(run_id)
        if dropped:
            log.info("training.store_uploads_discarded", run_id=run_id, prefixes=dropped)


class PartialRunActivities:
    """The local activity that cleans up after a cancel (any worker of the trainer queue)."""

    def __init__(self, runs_root: Path, tracking: TrackingConfig = TrackingConfig()) -> None:
        self._runs_root = runs_root
        self._tracking = tracking

    @activity.defn(name=DISCARD_RUN_ACTIVITY)
    async def discard_partial_run(self, run_id: str) -> bool:
        """Remove the output of a cancelled run unless it finished; True when removed.

        The workflow runs this as a local activity after a cancel, which covers a run
        cancelled while waiting between attempts (no attempt is running to clean up).
        Async, with all file system work on the loop's default executor, so it never waits
        behind a training run for the activity thread pool nor blocks the event loop.
        """
        return await asyncio.to_thread(
            discard_if_incomplete, self._runs_root, run_id, _workflow_id(), self._tracking
        )

    @activity.defn(name=CHECKPOINT_PROGRESS_ACTIVITY)
    async def newest_sealed_checkpoint(self, run_id: str) -> CheckpointProgress:
        """The run's newest sealed checkpoint (its manifest's attempt and step; not verified:
        the run's lifecycle asks only whether failed attempts sealed one). Async, on the
        loop's default executor, like ``discard_partial_run``."""
        return await asyncio.to_thread(newest_sealed_checkpoint, self._runs_root, run_id)


def newest_sealed_checkpoint(runs_root: Path, run_id: str) -> CheckpointProgress:
    run_dir = resolve_run_dir(runs_root, run_id)
    found = [CheckpointProgress()]
    for path in checkpoints.sealed_checkpoints(run_dir):
        sealed = checkpoints.read_seal(path)
        if sealed is not None:
            found.append(CheckpointProgress(attempt=sealed.attempt, step=sealed.step))
            break
    store = store_for(runs_root)
    # With a runs store, the attempts that sealed checkpoints ran on other machines.
    stored = store.newest_checkpoint_manifest(run_id, checkpoints.MANIFEST_NAME) if store else None
    if stored is not None:
        with contextlib.suppress(ManifestError):
            manifest = CheckpointManifest.parse(stored, f"{run_id}'s newest checkpoint")
            found.append(CheckpointProgress(attempt=manifest.attempt, step=manifest.step))
    return max(found, key=lambda progress: (progress.step, progress.attempt))
