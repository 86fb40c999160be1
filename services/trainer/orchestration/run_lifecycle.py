"""One run's lifecycle, shared by every workflow that trains: the ``fine_tune_bert``
activity executed again after preemptions (attempt numbers keep increasing), optionally in
segments that pause at halving rungs, and the partial run discarded when it is cancelled.

Workflow code: deterministic, only the shared types are imported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, RetryState

with workflow.unsafe.imports_passed_through():
    from shared.errors import NON_RETRYABLE_TYPES, WORKER_SHUTDOWN
    from shared.types import (
        CHECKPOINT_PROGRESS_ACTIVITY,
        DISCARD_RUN_ACTIVITY,
        FINE_TUNE_ACTIVITY,
        BertFineTuneRequest,
        BertFineTuneResult,
        CheckpointProgress,
    )
    from shared.workflow_versions import RETRY_BUDGET_COUNTS_PROGRESS

# No fixed limit on how long an attempt may train: a live attempt heartbeats, a lost one is
# detected by the heartbeat timeout and a hung one by the trainer's watchdog. The SDK needs
# some start-to-close timeout; this one only bounds a single attempt to a month.
TRAINING_ATTEMPT_LIMIT = timedelta(days=30)
TRAINING_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)
# A preemption (the worker sealed a checkpoint and handed the run back) costs no work, so it
# must not use up the retry budget meant for crashes: when the last attempt ended that way
# the activity is executed again, up to this many times per run.
MAX_PREEMPTION_REEXECUTIONS = 50
# Worker loss that lets the run advance never exhausts it: the retry budget above counts
# only attempts that add no checkpoint. When an execution's attempts have run out, the
# activity is executed again (fresh budget, higher attempt numbers) if one of them sealed a
# checkpoint newer than any seen before; so a run fails only after 5 attempts in a row of
# one execution sealed none. Bounded: each re-execution needs a strictly newer step.

# Called with the paused result at a rung; True: train on to the next rung or the end.
RungCallback = Callable[[BertFineTuneResult, int], Awaitable[bool]]


class RunLifecycle:
    """The activity executions of one run and its clean-up on cancel."""

    def __init__(self, request: BertFineTuneRequest, heartbeat_timeout: timedelta) -> None:
        self._request = request
        self._heartbeat_timeout = heartbeat_timeout
        self._executions = 0
        self._preemptions = 0
        # The newest checkpoint step that earned a re-execution (see ``_made_progress``).
        self._progress_step = -1

    async def train(
        self, rungs: Sequence[int] = (), on_rung: RungCallback | None = None
    ) -> BertFineTuneResult:
        """Train to the end, or (pausing at each rung) until ``on_rung`` says stop: the run
        is then committed as trained to that rung. Raises ``ActivityError`` when training
        fails and ``CancelledError`` (after discarding the partial run) when cancelled."""
        try:
            for rung in rungs:
                result = await self._execute({"pause_at_epoch": rung})
                if not result.paused:
                    return result  # finished without pausing (a reused finished run)
                if on_rung is not None and not await on_rung(result, rung):
                    return await self._execute({"finish_at_epoch": rung})
            return await self._execute({})
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                await self.discard()
                raise err.cause from None
            raise
        except (CancelledError, asyncio.CancelledError):
            await self.discard()
            raise

    async def _execute(self, segment: dict[str, int]) -> BertFineTuneResult:
        """One segment: the activity, executed again after each preemption."""
        while True:
            attempt_offset = self._executions * (TRAINING_RETRY_POLICY.maximum_attempts or 1)
            self._executions += 1
            try:
                return await workflow.execute_activity(
                    FINE_TUNE_ACTIVITY,
                    self._request.model_copy(update={"attempt_offset": attempt_offset, **segment}),
                    result_type=BertFineTuneResult,
                    start_to_close_timeout=TRAINING_ATTEMPT_LIMIT,
                    heartbeat_timeout=self._heartbeat_timeout,
                    retry_policy=TRAINING_RETRY_POLICY,
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            except ActivityError as err:
                cause = err.cause
                preempted = isinstance(cause, ApplicationError) and cause.type == WORKER_SHUTDOWN
                if not preempted and await self._made_progress(err, attempt_offset):
                    workflow.logger.warning(
                        "training.reexecuting_after_progress",
                        extra={
                            "run_id": self._request.run_id,
                            "execution": self._executions,
                            "checkpoint_step": self._progress_step,
                        },
                    )
                    continue
                if not preempted or self._preemptions >= MAX_PREEMPTION_REEXECUTIONS:
                    raise
                self._preemptions += 1
                workflow.logger.warning(
                    "training.reexecuting_after_preemption",
                    extra={"run_id": self._request.run_id, "execution": self._executions},
                )

    async def _made_progress(self, err: ActivityError, attempt_offset: int) -> bool:
        """Whether an execution whose retry budget ran out sealed a checkpoint in one of its
        own attempts (numbered above ``attempt_offset``) at a step newer than any before.
        (Behind a patch: executions recorded before it fail as they did.)"""
        if err.retry_state not in (RetryState.MAXIMUM_ATTEMPTS_REACHED, RetryState.TIMEOUT):
            return False  # non-retryable, cancelled: no budget question
        if not workflow.patched(RETRY_BUDGET_COUNTS_PROGRESS.id):
            return False
        newest = await workflow.execute_local_activity(
            CHECKPOINT_PROGRESS_ACTIVITY,
            self._request.run_id,
            result_type=CheckpointProgress,
            start_to_close_timeout=timedelta(minutes=2),
        )
        if newest.attempt <= attempt_offset or newest.step <= self._progress_step:
            return False
        self._progress_step = newest.step
        return True

    async def discard(self) -> None:
        """A cancelled run leaves no partial output, even when cancelled between attempts."""
        await workflow.execute_local_activity(
            DISCARD_RUN_ACTIVITY,
            self._request.run_id,
            result_type=bool,
            start_to_close_timeout=timedelta(minutes=5),
        )
