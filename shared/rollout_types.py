"""The internal steps of a rollout promotion (gate, canary, shadow, rollback): activity names
and their inputs and outputs (docs/inference.md, "Rollouts").

``BertPromoteWorkflow`` runs a rollout as: ``plan_promotion`` (a local activity: the alias's
state now and where gates are evaluated), then, for a gate, ``evaluate_promotion_gate`` on the
inference task queue (it loads both models, so it never runs inside the controller), then
``update_alias`` (a local activity: the pointer, atomically, under the promotion lock).

Imported by workflows: pure types, no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from shared.tasks import is_minimized
from shared.types import BertPromoteInput, PromotionGate

# Local activities of the trainer task queue's workers (trainers and controllers).
PLAN_PROMOTION_ACTIVITY = "plan_promotion"
UPDATE_ALIAS_ACTIVITY = "update_alias"
# A regular activity of the inference workers.
GATE_ACTIVITY = "evaluate_promotion_gate"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromotionPlan(_Strict):
    """The alias's pointer when the promotion started, and what the promotion must do."""

    # None: the alias does not exist yet.
    current_run_id: str | None = None
    canary_run_id: str | None = None
    shadow_run_id: str | None = None
    # Whether the gate must run: the alias exists, serves another run, and this is not the
    # completion of the candidate's own canary or shadow. Otherwise ``gate_skipped`` says why.
    run_gate: bool = False
    gate_skipped: str | None = None
    # The queue of the inference workers, which evaluate gates (``BERT_INFERENCE_TASK_QUEUE``
    # of the worker that planned).
    inference_task_queue: str
    # How long the gate may wait for an inferencer to pick it up before the promotion is
    # refused (``BERT_GATE_QUEUE_TIMEOUT_SECONDS`` of the worker that planned).
    gate_queue_timeout_seconds: float = 600.0


class GateRequest(_Strict):
    """Input of ``evaluate_promotion_gate``."""

    candidate_run_id: str
    current_run_id: str
    gate: PromotionGate


class GateScores(_Strict):
    """Output of ``evaluate_promotion_gate``: both runs' scores on the gate's rows."""

    metric: str
    candidate_run_id: str
    candidate_score: float
    current_run_id: str
    current_score: float
    rows: int

    def passes(self, min_delta: float) -> bool:
        """Candidate ≥ current + ``min_delta`` (≤ current − ``min_delta`` when lower is
        better)."""
        if is_minimized(self.metric):
            return self.candidate_score <= self.current_score - min_delta
        return self.candidate_score >= self.current_score + min_delta

    def refusal(self, alias: str, min_delta: float) -> str:
        """The ``PromotionRefused`` message: both scores, the rule and what to do."""
        lower = is_minimized(self.metric)
        needed = self.current_score - min_delta if lower else self.current_score + min_delta
        return (
            f"promotion of run {self.candidate_run_id!r} to alias {alias!r} refused by its "
            f"gate: {self.metric} {self.candidate_score:.4f} for the candidate vs "
            f"{self.current_score:.4f} for the current run {self.current_run_id!r} on "
            f"{self.rows} rows; it needed {'at most' if lower else 'at least'} {needed:.4f} "
            f"(min_delta {min_delta:g}, {'lower' if lower else 'higher'} is better). The "
            "alias was not changed: train a better run, or promote without the gate to "
            "override it"
        )


class AliasUpdate(_Strict):
    """Input of ``update_alias``: the promotion, and the alias's run its gate compared the
    candidate with (the update is refused if another promotion moved the alias meanwhile)."""

    request: BertPromoteInput
    # Checked only when ``check_current``: the alias's run the gate saw (None: no alias).
    expected_current_run_id: str | None = None
    check_current: bool = False
