"""Hang detection for every phase of a training attempt, each with its own limit.

Heartbeats come from a helper thread, so a phase that never returns (a hung dataset
download, a deadlocked tokenizer or data loader, an evaluation or a save stuck on a dead
volume) would heartbeat until the activity's start-to-close timeout. The watchdog knows
when each phase last made progress; once a phase has gone longer than its limit without
any, the reporter stops heartbeating so Temporal retries the attempt elsewhere, and the
worker's liveness fails so the pod is restarted (a thread stuck in native code cannot be
stopped from Python).

Progress is whatever the phase can show: a new step while training, a batch while
evaluating or tokenizing. Loading and saving show none, so their limit covers the whole
phase.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Stall:
    phase: str
    stuck_seconds: float
    limit_seconds: float

    def describe(self) -> str:
        return (
            f"phase {self.phase!r} has made no progress for {self.stuck_seconds:.0f}s "
            f"(limit {self.limit_seconds:.0f}s)"
        )


class PhaseWatchdog:
    """Tracks the current phase and its last progress; ``stalled()`` says when it hangs.

    Phases without a limit (``starting``, ``succeeded`` ...) are never taken as hung.
    """

    def __init__(
        self, limits: Mapping[str, float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = dict(limits)
        self._clock = clock
        self._lock = threading.Lock()
        self._phase = ""
        self._marker: object = None
        self._since = clock()

    def observe(self, phase: str, marker: object = None) -> None:
        """The reporter's latest state: a new phase or a new marker (a step) is progress."""
        with self._lock:
            if (phase, marker) != (self._phase, self._marker):
                self._phase, self._marker, self._since = phase, marker, self._clock()

    def progressed(self) -> None:
        """Progress that changes no reported field (an evaluation or tokenization batch)."""
        with self._lock:
            self._since = self._clock()

    def stalled(self) -> Stall | None:
        with self._lock:
            phase, since = self._phase, self._since
        limit = self._limits.get(phase)
        stuck = self._clock() - since
        if limit is None or stuck < limit:
            return None
        return Stall(phase, stuck, limit)
