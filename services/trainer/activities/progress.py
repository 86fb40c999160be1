"""Heartbeats from a helper thread, so every phase (even ones with no steps) heartbeats.

The reporter holds the latest ``TrainingProgress``. Its thread heartbeats it every
``interval`` seconds (the SDK throttles what reaches the server) and, less often, signals
it to the workflow so the ``progress`` query can answer without any I/O.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Protocol

from temporalio import activity

from services.trainer.activities.watchdog import PhaseWatchdog
from shared import metrics
from shared.logging import get_logger
from shared.types import TrainingProgress

log = get_logger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 2.0
SIGNAL_INTERVAL_SECONDS = 10.0
# Phase changes and checkpoints are signalled soon, but no sooner than this after the last
# signal: each signal is a workflow task of the receiving workflow (the experiment or sweep),
# and a short run passes through six phases in under a second. Signalled one by one, they
# queued ahead of the run's own completion at the worker (0.15 s per trial of a tiny model,
# 28 history events). The final phase is still signalled at once on the way out.
MIN_SIGNAL_SPACING_SECONDS = 1.0
# Well below Temporal's 51,200-event history limit, leaving room for the workflow's own events.
HISTORY_EVENTS_BUDGET = 25_000
HISTORY_CHECK_EVERY_SIGNALS = 25


class ProgressReporter:
    """Latest progress, heartbeated and signalled from a helper thread.

    The training thread only calls ``update``, ``heartbeat_now`` and ``signal_soon``; none of
    them waits on the network, so a slow or unreachable Temporal server never stalls a step.
    """

    def __init__(
        self,
        progress: TrainingProgress,
        signal: Callable[[TrainingProgress], None] | None = None,
        interval: float = HEARTBEAT_INTERVAL_SECONDS,
        signal_interval: float = SIGNAL_INTERVAL_SECONDS,
        watchdog: PhaseWatchdog | None = None,
        on_stall: Callable[[str], None] | None = None,
        min_signal_spacing: float = MIN_SIGNAL_SPACING_SECONDS,
    ) -> None:
        self._lock = threading.Lock()
        self._progress = progress
        self._signal = signal
        self._interval = interval
        self._signal_interval = signal_interval
        self._min_signal_spacing = min_signal_spacing
        self._last_signal = 0.0
        self._last_signalled: TrainingProgress | None = None
        self._signal_pending = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._training_started: tuple[float, int] | None = None
        # Heartbeats come from this helper thread, so without the watchdog a phase that never
        # returns would heartbeat forever. Once a phase exceeds its limit without progress
        # the reporter stops heartbeating: Temporal times the attempt out and retries it
        # elsewhere (resuming from the last checkpoint).
        self._watchdog = watchdog
        self._on_stall = on_stall
        if watchdog:
            watchdog.observe(progress.phase, progress.global_step)
        self.stalled = False

    @property
    def progress(self) -> TrainingProgress:
        with self._lock:
            return self._progress.model_copy()

    def update(self, **fields: object) -> None:
        with self._lock:
            progress = self._progress.model_copy(update=fields)
            step = progress.global_step
            if progress.phase == "training" and self._training_started is None:
                self._training_started = (time.monotonic(), step)
            if self._training_started and progress.max_steps:
                started, first_step = self._training_started
                elapsed = time.monotonic() - started
                if step > first_step and elapsed > 0:
                    rate = (step - first_step) / elapsed
                    progress.steps_per_second = rate
                    progress.eta_seconds = max(0.0, (progress.max_steps - step) / rate)
            phase_changed = progress.phase != self._progress.phase
            if self._watchdog:
                self._watchdog.observe(progress.phase, progress.global_step)
            self._progress = progress
        if phase_changed:
            self.signal_soon()  # phase changes reach the query without waiting an interval

    def progressed(self) -> None:
        """Progress no reported field shows (an evaluation or tokenization batch)."""
        if self._watchdog:
            self._watchdog.progressed()

    def signal_soon(self) -> None:
        """Have the helper thread heartbeat now and signal the workflow as soon as the
        minimum spacing since the last signal allows (e.g. a new checkpoint)."""
        with self._lock:
            self._signal_pending = True
        self._wake.set()

    def heartbeat_now(self) -> None:
        """Record a heartbeat (non-blocking: the SDK sends it at its next throttle tick)."""
        activity.heartbeat(self.progress.model_dump(mode="json"))
        metrics.HEARTBEAT_CLOCK.beat()

    def beat(self, force_signal: bool = False) -> None:
        """Heartbeat now; signal the workflow when due, requested (and spaced) or forced
        (may block)."""
        now = time.monotonic()
        since = now - self._last_signal
        due = since >= self._signal_interval
        with self._lock:  # decided first: a failing heartbeat must not leave it pending
            requested = self._signal_pending and (force_signal or since >= self._min_signal_spacing)
            if requested or force_signal:
                self._signal_pending = False
        self.heartbeat_now()
        progress = self.progress
        if self._signal and (
            force_signal or requested or (due and progress != self._last_signalled)
        ):
            self._last_signal = now
            self._last_signalled = progress
            try:
                self._signal(progress)
            except Exception as err:  # progress is best effort; training must go on
                log.warning("training.progress_signal_failed", error=str(err)[:300])

    def __enter__(self) -> ProgressReporter:
        self.beat(force_signal=True)
        context = contextvars.copy_context()  # activity.heartbeat needs the activity context
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=15)

    def _check_stall(self) -> bool:
        stall = self._watchdog.stalled() if self._watchdog else None
        if stall is None:
            return False
        self.stalled = True
        metrics.TRAINING_STALLS.inc()
        log.error(
            "training.stalled",
            phase=stall.phase,
            step=self.progress.global_step,
            stuck_seconds=round(stall.stuck_seconds),
            limit_seconds=round(stall.limit_seconds),
        )
        if self._on_stall:
            self._on_stall(f"{stall.describe()} at step {self.progress.global_step}")
        return True

    def _next_wait(self) -> float:
        """Until the next heartbeat, or sooner when a requested signal becomes due."""
        with self._lock:
            pending = self._signal_pending
        if not pending:
            return self._interval
        spaced_at = self._last_signal + self._min_signal_spacing
        return max(0.0, min(self._interval, spaced_at - time.monotonic()))

    def _run(self) -> None:
        while True:
            self._wake.wait(self._next_wait())
            self._wake.clear()
            stopping = self._stop.is_set()
            with self._lock:
                pending = self._signal_pending
            if stopping and not pending:
                return
            if self.stalled or self._check_stall():
                if stopping:
                    return
                continue  # let the heartbeat time out: the attempt is handed to another worker
            try:
                self.beat(force_signal=stopping)  # the final phase goes out at once
            except Exception as err:
                log.warning("training.heartbeat_failed", error=str(err)[:300])
            if stopping:
                return


class ProgressChannel(Protocol):
    """Where progress signals go: the workflow that answers the ``progress`` query."""

    def signal(self, progress: TrainingProgress) -> None: ...

    def history_length(self) -> int: ...


class ProgressSignaller:
    """Signals progress to a workflow, minding that workflow's history size.

    Temporal terminates a workflow whose history passes 51,200 events and each signal adds
    a few. Every ``check_every`` signals the history length is read; past
    ``history_budget`` events only milestones (phase or checkpoint changes) are sent.
    """

    def __init__(
        self,
        channel: ProgressChannel,
        history_budget: int = HISTORY_EVENTS_BUDGET,
        check_every: int = HISTORY_CHECK_EVERY_SIGNALS,
    ) -> None:
        self._channel = channel
        self._history_budget = history_budget
        self._check_every = check_every
        self._sent = 0
        self._milestone = ("", "")
        self.coarse = False

    def __call__(self, progress: TrainingProgress) -> None:
        milestone = (progress.phase, progress.latest_checkpoint or "")
        if self.coarse and milestone == self._milestone:
            return
        self._channel.signal(progress)
        self._milestone = milestone
        self._sent += 1
        if not self.coarse and self._sent % self._check_every == 0:
            history_length = self._channel.history_length()
            if history_length > self._history_budget:
                self.coarse = True
                log.warning(
                    "training.progress_signals_reduced",
                    history_length=history_length,
                    budget=self._history_budget,
                )
