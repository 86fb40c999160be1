"""``BertRunWorkflow`` (internal): one run, a child of an experiment or a sweep.

It owns the run's lifecycle (``RunLifecycle``: re-execution after preemption, discard on
cancel), starts the run's ONNX export once it has committed (``export_after_commit``; the
export goes on after this workflow returns) and, for successive halving, the conversation
with its parent at each rung: it signals ``rung_reached`` with the evaluation and waits for
``rung_decision``. Its id is
``{parent workflow id}/{run_id}``; progress signals go to the parent directly.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from services.trainer.orchestration.export_workflow import start_export
    from services.trainer.orchestration.run_lifecycle import RunLifecycle
    from shared.errors import DATASET_ERROR, truncate
    from shared.sweep_types import (
        RUN_WORKFLOW,
        RUNG_DECISION_SIGNAL,
        RUNG_REACHED_SIGNAL,
        BertRunInput,
        RungDecision,
        RungReport,
    )
    from shared.types import BertFineTuneResult


def run_workflow_id(parent_workflow_id: str, run_id: str) -> str:
    return f"{parent_workflow_id}/{run_id}"


# Any exception fails the workflow: a bug must never leave it RUNNING with a retrying task.
@workflow.defn(name=RUN_WORKFLOW, failure_exception_types=[Exception])
class BertRunWorkflow:
    @workflow.init
    def __init__(self, input: BertRunInput) -> None:
        self._decisions: dict[int, bool] = {}
        self._lifecycle = RunLifecycle(
            input.request, timedelta(seconds=input.heartbeat_timeout_seconds)
        )
        self._required_metric = input.required_metric

    @workflow.run
    async def run(self, input: BertRunInput) -> BertFineTuneResult:
        try:
            result = await self._lifecycle.train(input.rungs, self._ask_parent)
        except ActivityError as err:
            raise _as_run_failure(err) from None
        self._require_metric(result)
        if input.export_after_commit:
            # A run that reused another's model is served from that run's folder.
            await start_export(result.reused_from or result.run_id)
        return result

    @workflow.signal(name=RUNG_DECISION_SIGNAL)
    def rung_decision(self, decision: RungDecision) -> None:
        self._decisions[decision.epoch] = decision.keep_training

    async def _ask_parent(self, paused: BertFineTuneResult, rung: int) -> bool:
        """Report the evaluation at ``rung`` and wait for the parent's decision."""
        parent = workflow.info().parent
        if parent is None:
            return True  # started on its own: nobody compares it with other runs
        if self._required_metric and self._required_metric not in paused.eval_metrics:
            await self._lifecycle.discard()
            self._require_metric(paused)
        await workflow.get_external_workflow_handle(
            parent.workflow_id, run_id=parent.run_id
        ).signal(
            RUNG_REACHED_SIGNAL,
            RungReport(run_id=paused.run_id, epoch=rung, eval_metrics=paused.eval_metrics),
        )
        await workflow.wait_condition(lambda: rung in self._decisions)
        return self._decisions[rung]

    def _require_metric(self, result: BertFineTuneResult) -> None:
        if self._required_metric and self._required_metric not in result.eval_metrics:
            raise ApplicationError(
                f"run {result.run_id!r} has no evaluation data, so no "
                f"{self._required_metric}: a sweep compares trials on it; set "
                "validation_file (or a dataset with a validation split) in the base config",
                type=DATASET_ERROR,
                non_retryable=True,
            )


def _as_run_failure(err: ActivityError) -> ApplicationError:
    """The activity's own error (type kept), so the parent sees why the run failed."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return ApplicationError(cause.message, type=cause.type, non_retryable=True)
    return ApplicationError(
        truncate(str(cause or err)), type=type(cause or err).__name__, non_retryable=True
    )
