"""``BertFineTuningWorkflow``: one ``fine_tune_bert`` activity per config, progress on query.

Deterministic and light: only the shared types are imported (passed through the sandbox).
Runs are scheduled together; how many train at once is decided by how many trainer
workers poll the queue and their ``max_concurrent_activities``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from shared.errors import NON_RETRYABLE_TYPES, WORKER_SHUTDOWN, truncate
    from shared.types import (
        DISCARD_RUN_ACTIVITY,
        FINE_TUNE_ACTIVITY,
        FINE_TUNING_WORKFLOW,
        PROGRESS_QUERY,
        PROGRESS_SIGNAL,
        BertExperimentInput,
        BertExperimentOutput,
        BertFineTuneRequest,
        BertFineTuneResult,
        ExperimentProgress,
        RunProgress,
        TrainingProgress,
    )

TRAINING_START_TO_CLOSE = timedelta(hours=2)
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


# Any exception fails the workflow: a bug must never leave it RUNNING with a retrying task.
@workflow.defn(name=FINE_TUNING_WORKFLOW, failure_exception_types=[Exception])
class BertFineTuningWorkflow:
    @workflow.init
    def __init__(self, input: BertExperimentInput) -> None:
        self._experiment_name = input.experiment_name
        self._runs = {run_id: RunProgress(run_id=run_id) for run_id in input.run_ids()}

    @workflow.run
    async def run(self, input: BertExperimentInput) -> BertExperimentOutput:
        workflow.logger.info(
            "experiment.started",
            extra={"experiment": input.experiment_name, "runs": len(input.runs)},
        )
        requests = [
            BertFineTuneRequest(run_id=run_id, config=config, overwrite=input.overwrite)
            for run_id, config in zip(input.run_ids(), input.runs, strict=True)
        ]
        outcomes = await asyncio.gather(
            *(self._train(request, input.heartbeat_timeout_seconds) for request in requests),
            return_exceptions=True,
        )
        results = [o for o in outcomes if isinstance(o, BertFineTuneResult)]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if any(isinstance(e, (CancelledError, asyncio.CancelledError)) for e in errors):
            raise CancelledError("experiment cancelled")
        if errors:
            raise self._experiment_failure(errors, len(requests))
        workflow.logger.info("experiment.succeeded", extra={"experiment": input.experiment_name})
        return BertExperimentOutput(experiment_name=input.experiment_name, runs=results)

    async def _train(
        self, request: BertFineTuneRequest, heartbeat_seconds: int
    ) -> BertFineTuneResult:
        entry = self._runs[request.run_id]
        for execution in range(MAX_PREEMPTION_REEXECUTIONS + 1):
            attempt_offset = execution * (TRAINING_RETRY_POLICY.maximum_attempts or 1)
            try:
                result = await workflow.execute_activity(
                    FINE_TUNE_ACTIVITY,
                    request.model_copy(update={"attempt_offset": attempt_offset}),
                    result_type=BertFineTuneResult,
                    start_to_close_timeout=TRAINING_START_TO_CLOSE,
                    heartbeat_timeout=timedelta(seconds=heartbeat_seconds),
                    retry_policy=TRAINING_RETRY_POLICY,
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
                break
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, CancelledError):
                    await self._discard(entry)
                    raise cause from None
                preempted = isinstance(cause, ApplicationError) and cause.type == WORKER_SHUTDOWN
                if preempted and execution < MAX_PREEMPTION_REEXECUTIONS:
                    workflow.logger.warning(
                        "training.reexecuting_after_preemption",
                        extra={"run_id": request.run_id, "execution": execution + 1},
                    )
                    continue
                entry.state = "failed"
                entry.error = truncate(str(cause or err), 500)
                raise
            except (CancelledError, asyncio.CancelledError):
                await self._discard(entry)
                raise
        entry.state = "succeeded"
        entry.phase = "succeeded"
        entry.eval_accuracy = result.eval_accuracy
        entry.global_step = entry.max_steps or entry.global_step
        entry.eta_seconds = 0.0
        return result

    async def _discard(self, entry: RunProgress) -> None:
        """A cancelled run leaves no partial output, even when cancelled between attempts."""
        entry.state = "cancelled"
        await workflow.execute_local_activity(
            DISCARD_RUN_ACTIVITY,
            entry.run_id,
            result_type=bool,
            start_to_close_timeout=timedelta(minutes=5),
        )

    def _experiment_failure(self, errors: list[BaseException], total: int) -> ApplicationError:
        first = errors[0]
        cause = first.cause if isinstance(first, ActivityError) else first
        error_type = cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
        failed = [e for e in self._runs.values() if e.state == "failed"]
        summary = "; ".join(f"{e.run_id}: {e.error}" for e in failed) or str(cause)
        return ApplicationError(
            truncate(f"{len(errors)} of {total} runs failed: {summary}"),
            [e.model_dump(mode="json") for e in self._runs.values()],
            type=error_type,
            non_retryable=True,
        )

    @workflow.signal(name=PROGRESS_SIGNAL)
    def report_progress(self, progress: TrainingProgress) -> None:
        entry = self._runs.get(progress.run_id)
        if entry is None or entry.state in ("succeeded", "failed", "cancelled"):
            return
        if progress.attempt < entry.attempt:
            return  # a late signal from a superseded attempt
        entry.state = "running"
        entry.update_from(progress)

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> ExperimentProgress:
        return ExperimentProgress(
            experiment_name=self._experiment_name, runs=list(self._runs.values())
        )
