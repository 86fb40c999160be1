"""``BertExportWorkflow`` (internal): add a committed run's ONNX export, off the critical path.

Runs, sweeps and promotions start it and do not wait (``start_export``: the parent closes,
the export goes on). One ``export_run`` activity on the training queue does the work
(``services/trainer/activities/export.py``); a second start for the same run while one
runs is a no-op.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from shared.errors import NON_RETRYABLE_TYPES
    from shared.export_types import (
        EXPORT_ACTIVITY,
        EXPORT_FAILED,
        EXPORT_WORKFLOW,
        BertExportInput,
        BertExportOutput,
        export_workflow_id,
    )

EXPORT_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=3,
    non_retryable_error_types=[*NON_RETRYABLE_TYPES, EXPORT_FAILED],
)
# The export of a large model on CPU takes minutes; a lost trainer is noticed by heartbeat.
EXPORT_ATTEMPT_LIMIT = timedelta(hours=2)
EXPORT_HEARTBEAT_TIMEOUT = timedelta(minutes=1)


# Any exception fails the workflow: a bug must never leave it RUNNING with a retrying task.
@workflow.defn(name=EXPORT_WORKFLOW, failure_exception_types=[Exception])
class BertExportWorkflow:
    @workflow.run
    async def run(self, input: BertExportInput) -> BertExportOutput:
        return await workflow.execute_activity(
            EXPORT_ACTIVITY,
            input,
            result_type=BertExportOutput,
            start_to_close_timeout=EXPORT_ATTEMPT_LIMIT,
            heartbeat_timeout=EXPORT_HEARTBEAT_TIMEOUT,
            retry_policy=EXPORT_RETRY_POLICY,
        )


async def start_export(run_id: str) -> None:
    """Start the run's export as an abandoned child (it outlives the caller); a no-op when
    one is already running for the run. Workflow code."""
    try:
        await workflow.start_child_workflow(
            BertExportWorkflow.run,
            BertExportInput(run_id=run_id),
            id=export_workflow_id(run_id),
            task_queue=workflow.info().task_queue,
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        )
    except WorkflowAlreadyStartedError:
        workflow.logger.info("export.already_running", extra={"run_id": run_id})
