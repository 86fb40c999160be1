"""``BertPromoteWorkflow``: point an alias at a complete run, in one local activity.

A local activity runs on whichever worker holds the workflow task (a trainer or a
controller), without a trip through the activity task queue: a promotion never waits for a
trainer's busy activity slots nor for a scaled-to-zero GPU pool.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from services.trainer.orchestration.export_workflow import start_export
    from shared.errors import NON_RETRYABLE_TYPES
    from shared.types import (
        PROMOTE_ACTIVITY,
        PROMOTE_WORKFLOW,
        BertPromoteInput,
        BertPromoteOutput,
    )
    from shared.workflow_versions import PROMOTION_EXPORTS_RUN

PROMOTE_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)


# Any exception fails the workflow: a bug must never leave it RUNNING with a retrying task.
@workflow.defn(name=PROMOTE_WORKFLOW, failure_exception_types=[Exception])
class BertPromoteWorkflow:
    @workflow.run
    async def run(self, input: BertPromoteInput) -> BertPromoteOutput:
        result = await workflow.execute_local_activity(
            PROMOTE_ACTIVITY,
            input,
            result_type=BertPromoteOutput,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=PROMOTE_RETRY_POLICY,
        )
        workflow.logger.info(
            "alias.promoted",
            extra={"alias": result.alias, "run_id": result.run_id},
        )
        # A promoted run is about to be served: one without an export gets it now.
        # (Behind a patch: promotions recorded before it replay without this step.)
        if result.exported is False and workflow.patched(PROMOTION_EXPORTS_RUN.id):
            await start_export(result.run_id)
        return result
