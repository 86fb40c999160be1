"""The live state of every run a workflow trains, fed by the training activity's progress
signals. One base class for both parents (experiments and sweeps): the activity signals the
parent directly (``BertFineTuneRequest.progress_workflow_id``), whichever workflow runs it.

Workflow code: deterministic, only the shared types are imported. Temporal collects the
signal handler from the base class (``workflow.defn`` inspects inherited members).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from shared.errors import truncate
    from shared.types import PROGRESS_SIGNAL, BertFineTuneResult, RunProgress, TrainingProgress

TERMINAL_STATES = ("succeeded", "pruned", "failed", "cancelled")
MAX_ERROR_CHARS = 500


class RunBoard:
    """``self._runs``: run id -> live progress. Subclasses fill it and define the query."""

    _runs: dict[str, RunProgress]

    @workflow.signal(name=PROGRESS_SIGNAL)
    def report_progress(self, progress: TrainingProgress) -> None:
        entry = self._runs.get(progress.run_id)
        if entry is None or entry.state in TERMINAL_STATES:
            return
        if progress.attempt < entry.attempt:
            return  # a late signal from a superseded attempt
        entry.state = "running"
        entry.update_from(progress)

    def _mark_finished(self, result: BertFineTuneResult) -> None:
        entry = self._runs[result.run_id]
        entry.state = "pruned" if result.stopped_early else "succeeded"
        entry.phase = entry.state
        entry.eval_accuracy = result.eval_accuracy
        entry.global_step = entry.max_steps or entry.global_step
        entry.eta_seconds = 0.0

    def _mark_failed(self, run_id: str, error: BaseException) -> None:
        entry = self._runs[run_id]
        entry.state = "failed"
        entry.error = truncate(str(error), MAX_ERROR_CHARS)

    def _mark_cancelled(self, run_id: str) -> None:
        self._runs[run_id].state = "cancelled"
