"""``BertFineTuningWorkflow``: one run per config, progress on query.

Each run is a ``BertRunWorkflow`` child (its lifecycle: re-execution after preemption,
discard on cancel). Executions started before runs became children replay the old inline
path, which calls the same lifecycle (``workflow_versions.RUNS_AS_CHILDREN``).

Deterministic and light: only the shared types are imported (passed through the sandbox).
Runs are scheduled together; how many train at once is decided by how many trainer
workers poll the queue and their ``max_concurrent_activities``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

with workflow.unsafe.imports_passed_through():
    from services.trainer.orchestration.run_board import RunBoard
    from services.trainer.orchestration.run_lifecycle import RunLifecycle
    from services.trainer.orchestration.run_workflow import BertRunWorkflow, run_workflow_id
    from shared.errors import truncate
    from shared.sweep_types import BertRunInput
    from shared.types import (
        FINE_TUNING_WORKFLOW,
        PROGRESS_QUERY,
        BertExperimentInput,
        BertExperimentOutput,
        BertFineTuneRequest,
        BertFineTuneResult,
        ExperimentProgress,
        RunContext,
        RunProgress,
    )
    from shared.workflow_versions import RUNS_AS_CHILDREN


# Any exception fails the workflow: a bug must never leave it RUNNING with a retrying task.
@workflow.defn(name=FINE_TUNING_WORKFLOW, failure_exception_types=[Exception])
class BertFineTuningWorkflow(RunBoard):
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
        as_children = workflow.patched(RUNS_AS_CHILDREN.id)
        requests = [
            BertFineTuneRequest(run_id=run_id, config=config, overwrite=input.overwrite)
            for run_id, config in zip(input.run_ids(), input.runs, strict=True)
        ]
        train = self._train_in_child if as_children else self._train_inline
        outcomes = await asyncio.gather(
            *(train(request, input.heartbeat_timeout_seconds) for request in requests),
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

    async def _train_in_child(
        self, request: BertFineTuneRequest, heartbeat_seconds: int
    ) -> BertFineTuneResult:
        parent_id = workflow.info().workflow_id
        child_request = request.model_copy(
            update={
                "progress_workflow_id": parent_id,
                "context": RunContext(kind="experiment", name=self._experiment_name),
                # The run workflow exports after the commit, off the critical path.
                "export_at_commit": False,
            }
        )
        try:
            result = await workflow.execute_child_workflow(
                BertRunWorkflow.run,
                BertRunInput(
                    request=child_request,
                    heartbeat_timeout_seconds=heartbeat_seconds,
                    export_after_commit=True,
                ),
                id=run_workflow_id(parent_id, request.run_id),
                task_queue=workflow.info().task_queue,
            )
        except ChildWorkflowError as err:
            if isinstance(err.cause, CancelledError):
                self._mark_cancelled(request.run_id)
                raise err.cause from None
            self._mark_failed(request.run_id, err.cause or err)
            raise
        except asyncio.CancelledError:
            self._mark_cancelled(request.run_id)
            raise
        self._mark_finished(result)
        return result

    async def _train_inline(
        self, request: BertFineTuneRequest, heartbeat_seconds: int
    ) -> BertFineTuneResult:
        """Executions recorded before ``RUNS_AS_CHILDREN``: the same lifecycle, here. Deleted
        when that patch is deprecated (``shared.workflow_versions`` has the date)."""
        lifecycle = RunLifecycle(request, timedelta(seconds=heartbeat_seconds))
        try:
            result = await lifecycle.train()
        except ActivityError as err:
            self._mark_failed(request.run_id, err.cause or err)
            raise
        except (CancelledError, asyncio.CancelledError):
            self._mark_cancelled(request.run_id)
            raise
        self._mark_finished(result)
        return result

    def _experiment_failure(self, errors: list[BaseException], total: int) -> ApplicationError:
        first = errors[0]
        cause = first.cause if isinstance(first, (ActivityError, ChildWorkflowError)) else first
        error_type = cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
        failed = [e for e in self._runs.values() if e.state == "failed"]
        summary = "; ".join(f"{e.run_id}: {e.error}" for e in failed) or str(cause)
        return ApplicationError(
            truncate(f"{len(errors)} of {total} runs failed: {summary}"),
            [e.model_dump(mode="json") for e in self._runs.values()],
            type=error_type,
            non_retryable=True,
        )

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> ExperimentProgress:
        return ExperimentProgress(
            experiment_name=self._experiment_name, runs=list(self._runs.values())
        )
