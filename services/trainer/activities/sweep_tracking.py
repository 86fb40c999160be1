"""The ``close_sweep_tracking`` local activity: end a sweep's MLflow parent run.

The trials open the parent run (the first one to log creates it); only the sweep knows when
the search is over, so it closes the parent as its last step. Without an MLflow server this
does nothing, and a tracker outage is logged and counted, never raised.
"""

from __future__ import annotations

import asyncio

from temporalio import activity

from services.trainer.tracking.trackers import TrackingConfig
from shared.sweep_types import CLOSE_SWEEP_TRACKING_ACTIVITY, SweepTrackingEnd


class SweepTrackingActivities:
    def __init__(self, tracking: TrackingConfig = TrackingConfig()) -> None:
        self._tracking = tracking

    @activity.defn(name=CLOSE_SWEEP_TRACKING_ACTIVITY)
    async def close_sweep_tracking(self, end: SweepTrackingEnd) -> str | None:
        """The parent run's MLflow id, or None (no tracker, no parent, or MLflow away)."""
        uri = self._tracking.mlflow_tracking_uri
        if not uri:
            return None
        from services.trainer.tracking.mlflow_logger import close_sweep_run

        summary = {} if end.best_metric is None else {f"best_{end.metric}": end.best_metric}
        tags = {} if end.best_run_id is None else {"bert_finetune.best_run_id": end.best_run_id}
        return await asyncio.to_thread(
            close_sweep_run, uri, end.sweep_name, end.status, summary, tags
        )
