"""``BertPromoteWorkflow``: point an alias at a complete run, in one local activity.

A local activity runs on whichever worker holds the workflow task (a trainer or a
controller), without a trip through the activity task queue: a promotion never waits for a
trainer's busy activity slots nor for a scaled-to-zero GPU pool.

A rollout (``gate``, ``canary_percent``, ``shadow``, ``rollback``; ``PROMOTION_ROLLOUTS``)
plans in a local activity (the alias's state, the inference queue), evaluates its gate as a
regular activity on the inference task queue (it loads both models: an inferencer, never
the controller, does it, so a gated promotion needs no trainer either), refuses with
``PromotionRefused`` when the candidate is not good enough, and updates the alias in a last
local activity that checks nobody moved it meanwhile.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutType
from temporalio.exceptions import TimeoutError as TemporalTimeout

with workflow.unsafe.imports_passed_through():
    from services.trainer.orchestration.export_workflow import start_export
    from shared.errors import NON_RETRYABLE_TYPES, PROMOTION_REFUSED, failure
    from shared.rollout_types import (
        GATE_ACTIVITY,
        PLAN_PROMOTION_ACTIVITY,
        UPDATE_ALIAS_ACTIVITY,
        AliasUpdate,
        GateRequest,
        GateScores,
        PromotionPlan,
    )
    from shared.types import (
        PROMOTE_ACTIVITY,
        PROMOTE_WORKFLOW,
        BertPromoteInput,
        BertPromoteOutput,
        PromotionGateResult,
    )
    from shared.workflow_versions import PROMOTION_EXPORTS_RUN, PROMOTION_ROLLOUTS

PROMOTE_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)
# The gate loads two models and classifies the gate's file: minutes for a big file on CPU.
GATE_TIMEOUT = timedelta(minutes=30)
# The gate heartbeats per batch and while loading a model.
GATE_HEARTBEAT_TIMEOUT = timedelta(minutes=2)
GATE_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)


def _unclaimed(err: ActivityError) -> bool:
    """Whether the activity timed out waiting in its task queue (no worker picked it up)."""
    cause = err.cause
    return isinstance(cause, TemporalTimeout) and cause.type == TimeoutType.SCHEDULE_TO_START


# Any exception fails the workflow: a bug must never leave it RUNNING with a retrying task.
@workflow.defn(name=PROMOTE_WORKFLOW, failure_exception_types=[Exception])
class BertPromoteWorkflow:
    @workflow.run
    async def run(self, input: BertPromoteInput) -> BertPromoteOutput:
        # (Consulted only for rollouts: plain promotions record no marker and replay as before.)
        if input.is_rollout() and workflow.patched(PROMOTION_ROLLOUTS.id):
            return await self._rollout(input)
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

    async def _rollout(self, input: BertPromoteInput) -> BertPromoteOutput:
        plan = await workflow.execute_local_activity(
            PLAN_PROMOTION_ACTIVITY,
            input,
            result_type=PromotionPlan,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=PROMOTE_RETRY_POLICY,
        )
        gate: PromotionGateResult | None = None
        if input.gate is not None:
            gate = PromotionGateResult(
                metric=input.gate.metric,
                min_delta=input.gate.min_delta,
                current_run_id=plan.current_run_id,
                skipped=plan.gate_skipped,
            )
        if input.gate is not None and plan.run_gate:
            assert input.run_id is not None and plan.current_run_id is not None
            try:
                scores = await workflow.execute_activity(
                    GATE_ACTIVITY,
                    GateRequest(
                        candidate_run_id=input.run_id,
                        current_run_id=plan.current_run_id,
                        gate=input.gate,
                    ),
                    result_type=GateScores,
                    task_queue=plan.inference_task_queue,
                    # Nobody polling the inference queue must not leave the promotion RUNNING.
                    schedule_to_start_timeout=timedelta(seconds=plan.gate_queue_timeout_seconds),
                    start_to_close_timeout=GATE_TIMEOUT,
                    heartbeat_timeout=GATE_HEARTBEAT_TIMEOUT,
                    retry_policy=GATE_RETRY_POLICY,
                )
            except ActivityError as err:
                if not _unclaimed(err):
                    raise
                raise failure(
                    PROMOTION_REFUSED,
                    f"the gate was not evaluated: no inferencer polled task queue "
                    f"{plan.inference_task_queue!r} within "
                    f"{plan.gate_queue_timeout_seconds:g} s; '{input.alias}' still points at "
                    f"{plan.current_run_id}. Start an inferencer on that queue (bert-finetune "
                    f"worker inferencer, or scale the chart's inferencer up) and promote again",
                ) from None
            if not scores.passes(input.gate.min_delta):
                raise failure(PROMOTION_REFUSED, scores.refusal(input.alias, input.gate.min_delta))
            gate = PromotionGateResult(
                metric=scores.metric,
                candidate_score=scores.candidate_score,
                current_score=scores.current_score,
                current_run_id=scores.current_run_id,
                rows=scores.rows,
                min_delta=input.gate.min_delta,
            )
        result = await workflow.execute_local_activity(
            UPDATE_ALIAS_ACTIVITY,
            AliasUpdate(
                request=input,
                expected_current_run_id=plan.current_run_id,
                # A gate compared the candidate with the alias's run then: it must still be.
                check_current=input.gate is not None,
            ),
            result_type=BertPromoteOutput,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=PROMOTE_RETRY_POLICY,
        )
        workflow.logger.info(
            "alias.updated",
            extra={
                "alias": result.alias,
                "run_id": result.run_id,
                "canary_run_id": result.canary_run_id,
                "shadow_run_id": result.shadow_run_id,
            },
        )
        # The candidate is about to be served (all, a share, or in the shadow of the alias).
        if result.exported is False and input.run_id is not None and not input.rollback:
            await start_export(input.run_id)
        return result.model_copy(update={"gate": gate})
