"""The ``promote_alias`` local activity: move an alias pointer to a run that can be served.

Async, with the file work on the event loop's default executor: it never waits behind a
training run for the trainer's activity thread pool, and it runs the same on a controller
worker that registers no training at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from temporalio import activity

from services.trainer.run_folder.fencing import run_lock
from services.trainer.tracking.trackers import TrackingConfig
from shared import aliases
from shared.logging import get_logger
from shared.onnx_export import has_export
from shared.runs import ServedRun, resolve_run_dir, resolve_served_run
from shared.types import PROMOTE_ACTIVITY, BertPromoteInput, BertPromoteOutput

log = get_logger(__name__)


def promote_servable(
    runs_root: Path, run_id: str, alias: str, promoted_by: str | None = None
) -> tuple[BertPromoteOutput, ServedRun]:
    """Point ``alias`` at ``run_id`` only if the run can be served, decided before the pointer
    moves: what serves it (its own folder, or the source of a run that reused another's
    model, which must still hold the commit reused) is resolved under the locks of those
    runs, held until the pointer is written, so no commit swaps them in between. A refused
    promotion (``RunNotFound``, ``InvalidConfig``) leaves the alias where it was."""
    served: list[ServedRun] = []

    @contextmanager
    def servable() -> Iterator[None]:
        run_dir = resolve_run_dir(runs_root, run_id)
        with run_lock(run_dir):
            found = resolve_served_run(runs_root, run_id)
            if found.model_dir == run_dir:
                served.append(found)
                yield
                return
            with run_lock(found.model_dir):  # the source's commit must stay the one reused
                served.append(resolve_served_run(runs_root, run_id))
                yield

    result = aliases.promote(runs_root, run_id, alias, promoted_by, servable=servable)
    return result, served[-1]


class PromotionActivities:
    """``tracking``: with an MLflow server and a registered model name, each promotion is
    mirrored to MLflow's model registry (the runs volume stays what the inferencer serves)."""

    def __init__(self, runs_root: Path, tracking: TrackingConfig = TrackingConfig()) -> None:
        self._runs_root = runs_root
        self._tracking = tracking

    @activity.defn(name=PROMOTE_ACTIVITY)
    async def promote_alias(self, request: BertPromoteInput) -> BertPromoteOutput:
        # The workflow run id makes a retry of this promotion recognise its own write.
        promoted_by = activity.info().workflow_run_id
        result, served = await asyncio.to_thread(
            promote_servable, self._runs_root, request.run_id, request.alias, promoted_by
        )
        result = result.model_copy(
            update={"exported": await asyncio.to_thread(has_export, served.model_dir)}
        )
        log.info(
            "alias.promoted",
            alias=result.alias,
            run_id=result.run_id,
            previous_run_id=result.previous_run_id,
            exported=result.exported,
        )
        self._mirror_soon(result)
        return result

    def _mirror_soon(self, result: BertPromoteOutput) -> None:
        """Mirror to the registry in the background: an upload may outlast a local activity,
        and a tracker outage must never fail or slow a promotion (mirroring never raises and
        is idempotent, so a retried promotion mirrors again safely)."""
        uri, model = self._tracking.mlflow_tracking_uri, self._tracking.registered_model
        if not uri or not model:
            return
        from services.trainer.tracking.model_registry import mirror_promotion

        served = resolve_served_run(self._runs_root, result.run_id)
        threading.Thread(
            target=mirror_promotion,
            args=(uri, result.run_id, result.alias, served.model_dir, model),
            name=f"mirror-{result.alias}",
            daemon=True,
        ).start()
