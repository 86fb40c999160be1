"""``BertSweepWorkflow``: search a config space, one ``BertRunWorkflow`` child per trial.

- Proposals come from the ``propose_sweep_trials`` local activity (Optuna samplers, grid
  product), recorded in history: grid and random are proposed all at once at the start,
  TPE one trial at a time when a slot frees, from the trials finished so far.
- At most ``max_concurrent_trials`` children run at once.
- Successive halving: a child pauses at each rung and signals ``rung_reached``; the
  decision (``sweep_rules.keeps_training``) goes back as ``rung_decision``. Signals are
  handled in arrival order, which history records, so decisions replay exactly.
- The sweep succeeds when at least one trial succeeded; then (and only then) the best
  trial is promoted to ``promote_alias``.

Deterministic and light: only shared types and pure rules are imported.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    FailureError,
)

with workflow.unsafe.imports_passed_through():
    from services.trainer.orchestration.export_workflow import start_export
    from services.trainer.orchestration.run_board import RunBoard
    from services.trainer.orchestration.run_workflow import BertRunWorkflow, run_workflow_id
    from services.trainer.orchestration.sweep_rules import best_trial, halving_rungs, keeps_training
    from shared.errors import truncate
    from shared.sweep_types import (
        CHECK_SWEEP_RUNS_ACTIVITY,
        CLOSE_SWEEP_TRACKING_ACTIVITY,
        PROPOSE_TRIALS_ACTIVITY,
        RUNG_DECISION_SIGNAL,
        RUNG_REACHED_SIGNAL,
        SWEEP_WORKFLOW,
        BertRunInput,
        BertSweepInput,
        BertSweepOutput,
        RungDecision,
        RungReport,
        SweepProgress,
        SweepRunsCheck,
        SweepTrackingEnd,
        SweepTrial,
        SweepTrialProgress,
        TrialObservation,
        TrialProposalRequest,
    )
    from shared.types import (
        PROGRESS_QUERY,
        PROMOTE_WORKFLOW,
        BertFineTuneRequest,
        BertPromoteInput,
        BertPromoteOutput,
        RunContext,
        RunProgress,
    )
    from shared.workflow_versions import SWEEP_CLOSES_TRACKING, SWEEP_EXPORTS_BEST_TRIAL

LOCAL_ACTIVITY_TIMEOUT = timedelta(minutes=2)
# A proposal or check that keeps failing is a bug or a misconfigured worker: fail the
# sweep with its error instead of retrying for ever.
LOCAL_ACTIVITY_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=["InvalidConfig"])
PROMOTE_TIMEOUT = timedelta(minutes=10)


# Any exception fails the workflow: a bug must never leave it RUNNING with a retrying task.
@workflow.defn(name=SWEEP_WORKFLOW, failure_exception_types=[Exception])
class BertSweepWorkflow(RunBoard):
    @workflow.init
    def __init__(self, input: BertSweepInput) -> None:
        self._input = input
        self._runs: dict[str, RunProgress] = {}
        self._trials: list[SweepTrialProgress] = []
        self._by_run_id: dict[str, SweepTrialProgress] = {}
        # Halving: rung epoch -> (trial index, metric) in arrival order.
        self._rung_arrivals: dict[int, list[tuple[int, float]]] = {}
        self._rung_values: dict[int, dict[int, float]] = {}
        self._decisions: dict[tuple[str, int], bool] = {}
        self._first_failure: ApplicationError | None = None
        # Set when the sweep itself is cancelled: its trials then end cancelled, not failed.
        self._cancelling = False

    @workflow.run
    async def run(self, input: BertSweepInput) -> BertSweepOutput:
        try:
            output = await self._search(input)
        except (CancelledError, asyncio.CancelledError):
            await self._close_tracking("KILLED")
            raise
        except Exception:
            await self._close_tracking("FAILED")
            raise
        await self._close_tracking("FINISHED", output)
        return output

    async def _search(self, input: BertSweepInput) -> BertSweepOutput:
        total = input.total_trials()
        workflow.logger.info(
            "sweep.started",
            extra={"sweep": input.sweep_name, "strategy": input.strategy, "trials": total},
        )
        planned = [] if input.strategy == "tpe" else await self._propose(0, total)
        await self._check_runs(planned)
        slots = asyncio.Semaphore(input.max_concurrent_trials)
        tasks: list[asyncio.Task[None]] = []
        try:
            for index in range(total):
                await slots.acquire()
                params = planned[index] if planned else (await self._propose(index, 1))[0]
                trial = self._add_trial(index, params)
                tasks.append(asyncio.create_task(self._run_trial(trial, slots)))
            await asyncio.gather(*tasks)
        except (CancelledError, asyncio.CancelledError):
            self._cancelling = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for trial in self._trials:
                if trial.state in ("pending", "running"):
                    trial.state = "cancelled"
            workflow.logger.info("sweep.cancelled", extra={"sweep": input.sweep_name})
            raise
        return await self._finish()

    # --- trials -------------------------------------------------------------------------

    def _add_trial(self, index: int, params: dict[str, Any]) -> SweepTrialProgress:
        run_id = self._input.trial_run_id(index, params)
        trial = SweepTrialProgress(trial_index=index, run_id=run_id, params=params)
        self._trials.append(trial)
        self._by_run_id[run_id] = trial
        self._runs[run_id] = RunProgress(run_id=run_id)
        return trial

    async def _run_trial(self, trial: SweepTrialProgress, slots: asyncio.Semaphore) -> None:
        """One child; its outcome lands in the trial entry. Raises only when the sweep
        itself is cancelled (a trial cancelled on its own, e.g. with `temporal workflow
        cancel` on the child, counts as failed)."""
        sweep = self._input
        parent_id = workflow.info().workflow_id
        config = sweep.trial_config(trial.params)
        request = BertFineTuneRequest(
            run_id=trial.run_id,
            config=config,
            overwrite=sweep.overwrite,
            progress_workflow_id=parent_id,
            export_at_commit=False,  # only the best trial is exported, after the sweep
            context=RunContext(
                kind="sweep",
                name=sweep.sweep_name,
                trial_index=trial.trial_index,
                params=trial.params,
            ),
        )
        trial.state = "running"
        try:
            result = await workflow.execute_child_workflow(
                BertRunWorkflow.run,
                BertRunInput(
                    request=request,
                    heartbeat_timeout_seconds=sweep.heartbeat_timeout_seconds,
                    rungs=halving_rungs(sweep.early_stopping, config.num_epochs),
                    required_metric=sweep.metric,
                ),
                id=run_workflow_id(parent_id, trial.run_id),
                task_queue=workflow.info().task_queue,
            )
        except ChildWorkflowError as err:
            if self._cancelling and isinstance(err.cause, CancelledError):
                self._trial_cancelled(trial)
                raise err.cause from None
            self._trial_failed(trial, err.cause or err)
            return
        except asyncio.CancelledError:
            self._trial_cancelled(trial)
            raise
        finally:
            slots.release()
        self._mark_finished(result)
        trial.state = "pruned" if result.stopped_early else "succeeded"
        trial.eval_metrics = dict(result.eval_metrics)
        trial.epochs_completed = result.epochs_completed or config.num_epochs

    def _trial_cancelled(self, trial: SweepTrialProgress) -> None:
        self._mark_cancelled(trial.run_id)
        trial.state = "cancelled"

    def _trial_failed(self, trial: SweepTrialProgress, error: BaseException) -> None:
        self._mark_failed(trial.run_id, error)
        trial.state = "failed"
        trial.error = self._runs[trial.run_id].error
        if self._first_failure is None:
            error_type = error.type if isinstance(error, ApplicationError) else None
            self._first_failure = ApplicationError(
                str(error), type=error_type or type(error).__name__, non_retryable=True
            )
        workflow.logger.warning(
            "sweep.trial_failed", extra={"run_id": trial.run_id, "error": trial.error}
        )

    # --- successive halving ---------------------------------------------------------------

    @workflow.signal(name=RUNG_REACHED_SIGNAL)
    async def rung_reached(self, report: RungReport) -> None:
        trial = self._by_run_id.get(report.run_id)
        if trial is None or self._input.early_stopping is None:
            return
        key = (report.run_id, report.epoch)
        if key not in self._decisions:  # a repeated report gets the same answer
            metric = self._input.metric
            value = report.eval_metrics[metric]
            arrivals = self._rung_arrivals.setdefault(report.epoch, [])
            arrivals.append((trial.trial_index, value))
            self._rung_values.setdefault(trial.trial_index, {})[report.epoch] = value
            self._decisions[key] = keeps_training(
                arrivals, trial.trial_index, metric, self._input.early_stopping.reduction_factor
            )
            trial.eval_metrics = dict(report.eval_metrics)
            trial.epochs_completed = report.epoch
            workflow.logger.info(
                "sweep.rung",
                extra={
                    "run_id": report.run_id,
                    "epoch": report.epoch,
                    metric: value,
                    "keep_training": self._decisions[key],
                },
            )
        child = workflow.get_external_workflow_handle(
            run_workflow_id(workflow.info().workflow_id, report.run_id)
        )
        decision = RungDecision(epoch=report.epoch, keep_training=self._decisions[key])
        try:
            await child.signal(RUNG_DECISION_SIGNAL, decision)
        except FailureError as err:
            # The trial closed meanwhile (cancelled with the sweep): nobody waits for it.
            workflow.logger.warning(
                "sweep.rung_decision_undelivered",
                extra={"run_id": report.run_id, "error": str(err)},
            )

    # --- proposals and checks -------------------------------------------------------------

    async def _propose(self, first_index: int, count: int) -> list[dict[str, Any]]:
        sweep = self._input
        request = TrialProposalRequest(
            space=sweep.space,
            strategy=sweep.strategy,
            seed=sweep.seed,
            metric=sweep.metric,
            num_trials=sweep.total_trials(),
            first_index=first_index,
            count=count,
            history=[self._observation(trial) for trial in self._trials],
        )
        try:
            return await workflow.execute_local_activity(
                PROPOSE_TRIALS_ACTIVITY,
                request,
                result_type=list[dict[str, Any]],
                start_to_close_timeout=LOCAL_ACTIVITY_TIMEOUT,
                retry_policy=LOCAL_ACTIVITY_RETRY,
            )
        except ActivityError as err:
            raise (err.cause or err) from None

    def _observation(self, trial: SweepTrialProgress) -> TrialObservation:
        state = trial.state if trial.state in ("succeeded", "pruned", "failed") else "running"
        return TrialObservation(
            trial_index=trial.trial_index,
            params=trial.params,
            state=state,
            value=trial.eval_metrics.get(self._input.metric) if state == "succeeded" else None,
            intermediate=self._rung_values.get(trial.trial_index, {}),
        )

    async def _check_runs(self, planned: list[dict[str, Any]]) -> None:
        """Refuse fast a sweep whose run ids hold other configs' finished runs."""
        try:
            await workflow.execute_local_activity(
                CHECK_SWEEP_RUNS_ACTIVITY,
                SweepRunsCheck(sweep=self._input, proposals=planned),
                start_to_close_timeout=LOCAL_ACTIVITY_TIMEOUT,
                retry_policy=LOCAL_ACTIVITY_RETRY,
            )
        except ActivityError as err:
            raise (err.cause or err) from None

    # --- the end --------------------------------------------------------------------------

    async def _close_tracking(
        self, status: Literal["FINISHED", "FAILED", "KILLED"], output: BertSweepOutput | None = None
    ) -> None:
        """End the sweep's parent run in the experiment tracker; never fails the sweep.
        (Behind a patch: sweeps recorded before it replay without this step.)"""
        if not workflow.patched(SWEEP_CLOSES_TRACKING.id):
            return
        end = SweepTrackingEnd(
            sweep_name=self._input.sweep_name,
            status=status,
            metric=self._input.metric,
            best_run_id=output.best_run_id if output else None,
            best_metric=output.best_metric if output else None,
        )
        try:
            await workflow.execute_local_activity(
                CLOSE_SWEEP_TRACKING_ACTIVITY,
                end,
                start_to_close_timeout=LOCAL_ACTIVITY_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as err:
            workflow.logger.warning(
                "sweep.tracking_not_closed", extra={"sweep": end.sweep_name, "error": str(err)}
            )

    async def _finish(self) -> BertSweepOutput:
        sweep = self._input
        metric = sweep.metric
        scored = [
            (t.trial_index, t.eval_metrics[metric])
            for t in self._trials
            if t.state == "succeeded" and metric in t.eval_metrics
        ]
        best_index = best_trial(scored, metric)
        if best_index is None:
            raise self._sweep_failure()
        best = self._trials[best_index]
        # Trials commit without an ONNX export (most are never served): the best gets one.
        # (Behind a patch: sweeps recorded before it replay without this step.)
        if workflow.patched(SWEEP_EXPORTS_BEST_TRIAL.id):
            await start_export(best.run_id)
        alias = None
        if sweep.promote_alias:
            promoted = await workflow.execute_child_workflow(
                PROMOTE_WORKFLOW,
                BertPromoteInput(run_id=best.run_id, alias=sweep.promote_alias),
                id=f"{workflow.info().workflow_id}/promote",
                task_queue=workflow.info().task_queue,
                execution_timeout=PROMOTE_TIMEOUT,
                result_type=BertPromoteOutput,
            )
            alias = promoted.alias
        workflow.logger.info(
            "sweep.succeeded", extra={"sweep": sweep.sweep_name, "best_run_id": best.run_id}
        )
        return BertSweepOutput(
            sweep_name=sweep.sweep_name,
            metric=metric,
            best_run_id=best.run_id,
            best_metric=best.eval_metrics[metric],
            alias=alias,
            trials=[
                SweepTrial(
                    trial_index=t.trial_index,
                    run_id=t.run_id,
                    params=t.params,
                    state=t.state,
                    eval_metrics=t.eval_metrics,
                    epochs_completed=t.epochs_completed,
                    error=t.error,
                )
                for t in self._trials
            ],
        )

    def _sweep_failure(self) -> ApplicationError:
        """No trial succeeded: fail with the type of the first failure."""
        first = self._first_failure
        summary = "; ".join(f"{t.run_id}: {t.state} {t.error or ''}".strip() for t in self._trials)
        return ApplicationError(
            truncate(f"no trial of sweep {self._input.sweep_name!r} succeeded: {summary}"),
            [t.model_dump(mode="json") for t in self._trials],
            type=first.type if first is not None else "SweepFailed",
            non_retryable=True,
        )

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> SweepProgress:
        metric = self._input.metric
        best = best_trial(
            (
                (t.trial_index, t.eval_metrics[metric])
                for t in self._trials
                if t.state == "succeeded" and metric in t.eval_metrics
            ),
            metric,
        )
        trials = []
        for trial in self._trials:
            live = self._runs[trial.run_id]
            trials.append(
                trial.model_copy(
                    update={
                        "phase": live.phase if trial.state == "running" else trial.state,
                        "global_step": live.global_step,
                        "max_steps": live.max_steps,
                        "epoch": live.epoch,
                    }
                )
            )
        return SweepProgress(
            sweep_name=self._input.sweep_name,
            metric=metric,
            best_run_id=None if best is None else self._trials[best].run_id,
            num_trials=self._input.total_trials(),
            trials=trials,
        )
