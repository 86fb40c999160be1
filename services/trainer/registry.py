"""What a worker on the training queue registers, in one place.

Workflow tasks of the trainer queue may run on any worker that polls it: a GPU trainer or a
controller that trains nothing. Each such worker registers every workflow below and every
local activity those workflows call; only trainers add ``fine_tune_bert`` and
``export_run`` (the ONNX export).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from services.trainer.activities.fine_tune import PartialRunActivities
from services.trainer.activities.promotion import PromotionActivities
from services.trainer.activities.sweep import SweepRunActivities, propose_sweep_trials
from services.trainer.activities.sweep_tracking import SweepTrackingActivities
from services.trainer.orchestration.export_workflow import BertExportWorkflow
from services.trainer.orchestration.promotion_workflow import BertPromoteWorkflow
from services.trainer.orchestration.run_workflow import BertRunWorkflow
from services.trainer.orchestration.sweep_workflow import BertSweepWorkflow
from services.trainer.orchestration.workflows import BertFineTuningWorkflow
from services.trainer.tracking.trackers import TrackingConfig
from shared.types import INFERENCE_TASK_QUEUE

TRAINER_WORKFLOWS: list[type] = [
    BertFineTuningWorkflow,
    BertRunWorkflow,
    BertSweepWorkflow,
    BertPromoteWorkflow,
    BertExportWorkflow,
]


def orchestration_activities(
    runs_root: Path,
    tracking: TrackingConfig = TrackingConfig(),
    inference_task_queue: str = INFERENCE_TASK_QUEUE,
    gate_queue_timeout: timedelta = timedelta(minutes=10),
) -> list[Callable[..., Any]]:
    """The local activities of ``TRAINER_WORKFLOWS`` (no GPU, no training).

    ``tracking``: discarding a run cancelled between attempts also closes its MLflow run, and
    promotions are mirrored to MLflow's model registry when one is configured.
    ``inference_task_queue``: where a gated promotion's evaluation runs (the inferencers);
    ``gate_queue_timeout``: how long it waits for one to pick it up before it is refused.
    """
    promotion = PromotionActivities(runs_root, tracking, inference_task_queue, gate_queue_timeout)
    return [
        PartialRunActivities(runs_root, tracking).discard_partial_run,
        PartialRunActivities(runs_root, tracking).newest_sealed_checkpoint,
        promotion.promote_alias,
        promotion.plan_promotion,
        promotion.update_alias,
        SweepRunActivities(runs_root).check_sweep_runs,
        propose_sweep_trials,
        SweepTrackingActivities(tracking).close_sweep_tracking,
    ]
