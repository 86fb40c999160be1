"""Every ``workflow.patched`` id of the product, and when each may be retired.

Workflow code changes behind a patch so that executions recorded before the change replay
(Temporal's versioning guide). Each id is a named constant here, never an inline string (a
test checks), with the date its release shipped. The schedule for one id:

1. **patched**: ``if workflow.patched(ID): new else: old`` ships on ``added``.
2. **deprecate_patch**: the old branch is deleted and the call becomes
   ``workflow.deprecate_patch(ID)`` in the first release on or after
   ``added + MAX_OPEN_DAYS + RETENTION_DAYS``: by then no execution that ran the old code is
   still open (none runs longer than ``MAX_OPEN_DAYS`` across an upgrade) and none is still
   retained (queries replay closed histories within the namespace's retention). The recorded
   histories in ``tests/histories`` that take the old branch are retired in the same change.
3. **removed**: the ``deprecate_patch`` call goes once the same span has passed since step 2.

An install with a longer retention than the chart's default (``temporal.namespace.retentionDays``)
moves every date back by the difference: read ``docs/durability.md`` before upgrading across a
deprecation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

# The namespace retention the chart and ``bert-finetune dev`` configure (days).
RETENTION_DAYS = 3
# The longest an experiment, sweep or promotion may stay open across an upgrade (days).
MAX_OPEN_DAYS = 7


@dataclass(frozen=True)
class Patch:
    """One patch id and the release date that introduced it."""

    id: str
    added: date
    why: str

    @property
    def deprecate_after(self) -> date:
        """The first day its old branch may be deleted (``deprecate_patch``)."""
        return self.added + timedelta(days=MAX_OPEN_DAYS + RETENTION_DAYS)


RUNS_AS_CHILDREN = Patch(
    "runs-as-child-workflows",
    date(2026, 11, 29),
    "experiments train each run in a BertRunWorkflow child (the old branch trains inline)",
)
PROMOTION_EXPORTS_RUN = Patch(
    "promotion-exports-run",
    date(2026, 11, 29),
    "a promotion of a run without an ONNX export starts BertExportWorkflow",
)
SWEEP_CLOSES_TRACKING = Patch(
    "sweep-closes-tracking",
    date(2026, 11, 29),
    "a sweep ends its MLflow parent run in a last local activity",
)
SWEEP_EXPORTS_BEST_TRIAL = Patch(
    "sweep-exports-best-trial",
    date(2026, 11, 29),
    "a sweep starts BertExportWorkflow for its best trial",
)
SMALL_REQUEST_LOCAL_ACTIVITY = Patch(
    "small-request-local-activity",
    date(2026, 11, 29),
    "inference of at most 32 texts runs as a local activity",
)
WARM_LOCAL_ACTIVITY = Patch(
    "warm-local-activity",
    date(2026, 12, 7),
    "a small request runs as a local activity only when its model is loaded on that worker; "
    "a cold one runs as a regular activity (no model load inside a workflow task)",
)
RETRY_BUDGET_COUNTS_PROGRESS = Patch(
    "retry-budget-counts-progress",
    date(2026, 12, 7),
    "a training execution whose retries ran out but sealed a newer checkpoint runs again",
)
INFERENCE_PAYLOAD_COUNTS_PAIRS = Patch(
    "inference-payload-counts-pairs",
    date(2026, 12, 7),
    "an inference request's size check counts its text_pairs (consulted only for requests "
    "with pairs: without them the estimate is unchanged)",
)
PROMOTION_ROLLOUTS = Patch(
    "promotion-rollouts",
    date(2026, 12, 7),
    "a promotion with a gate, canary_percent, shadow or rollback plans, gates (an activity on "
    "the inference queue) and updates the alias in their own activities (consulted only for "
    "such promotions: a plain one is unchanged)",
)

ALL_PATCHES = (
    RUNS_AS_CHILDREN,
    PROMOTION_EXPORTS_RUN,
    SWEEP_CLOSES_TRACKING,
    SWEEP_EXPORTS_BEST_TRIAL,
    SMALL_REQUEST_LOCAL_ACTIVITY,
    WARM_LOCAL_ACTIVITY,
    RETRY_BUDGET_COUNTS_PROGRESS,
    INFERENCE_PAYLOAD_COUNTS_PAIRS,
    PROMOTION_ROLLOUTS,
)
