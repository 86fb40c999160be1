"""The promotion's local activities: ``promote_alias`` moves an alias pointer to a run that
can be served; a rollout (gate, canary, shadow, rollback) runs ``plan_promotion`` and
``update_alias`` around its gate (``shared/rollout_types.py``).

Async, with the file work on the event loop's default executor: they never wait behind a
training run for the trainer's activity thread pool, and they run the same on a controller
worker that registers no training at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from temporalio import activity

from services.trainer.run_folder.fencing import run_lock
from services.trainer.tracking.trackers import TrackingConfig
from shared import aliases
from shared.errors import INVALID_CONFIG, failure
from shared.logging import get_logger
from shared.onnx_export import has_export
from shared.rollout_types import (
    PLAN_PROMOTION_ACTIVITY,
    UPDATE_ALIAS_ACTIVITY,
    AliasUpdate,
    PromotionPlan,
)
from shared.runs import (
    ServedRun,
    read_record,
    require_complete_run,
    resolve_run_dir,
    resolve_served_run,
)
from shared.types import (
    INFERENCE_TASK_QUEUE,
    PROMOTE_ACTIVITY,
    BertPromoteInput,
    BertPromoteOutput,
)

log = get_logger(__name__)


@contextmanager
def _servable_locks(runs_root: Path, run_id: str, served: list[ServedRun]) -> Iterator[None]:
    """Hold the locks of what serves ``run_id`` (its folder, or the source of a run that
    reused another's model, which must still hold the commit reused), appending it to
    ``served``; raises when the run cannot be served."""
    run_dir = resolve_run_dir(runs_root, run_id)
    with run_lock(run_dir):
        # The small files only: a promotion from an object store downloads no weights.
        found = resolve_served_run(runs_root, run_id, weights=False)
        if found.model_dir == run_dir:
            served.append(found)
            yield
            return
        with run_lock(found.model_dir):  # the source's commit must stay the one reused
            served.append(resolve_served_run(runs_root, run_id, weights=False))
            yield


def promote_servable(
    runs_root: Path, run_id: str, alias: str, promoted_by: str | None = None
) -> tuple[BertPromoteOutput, ServedRun]:
    """Point ``alias`` at ``run_id`` only if the run can be served, decided before the pointer
    moves: what serves it (its own folder, or the source of a run that reused another run's
    model, which must still hold the commit reused) is resolved under the locks of those
    runs, held until the pointer is written, so no commit swaps them in between. A refused
    promotion (``RunNotFound``, ``InvalidConfig``) leaves the alias where it was."""
    served: list[ServedRun] = []
    result = aliases.promote(
        runs_root,
        run_id,
        alias,
        promoted_by,
        servable=lambda: _servable_locks(runs_root, run_id, served),
    )
    return result, served[-1]


def plan_rollout(
    runs_root: Path,
    request: BertPromoteInput,
    inference_task_queue: str,
    gate_queue_timeout_seconds: float = 600.0,
) -> PromotionPlan:
    """The alias's state now and whether the promotion's gate must run: not for a new alias
    (it always passes), nor for the alias's own run, nor to complete the candidate's canary
    or shadow (promoting it again without ``canary_percent`` and ``shadow``)."""
    if request.run_id is not None and not request.rollback:
        require_complete_run(runs_root, request.run_id)  # RunNotFound before any gate
    pointer = aliases.read_pointer(runs_root, request.alias)
    plan = PromotionPlan(
        inference_task_queue=inference_task_queue,
        gate_queue_timeout_seconds=gate_queue_timeout_seconds,
    )
    if pointer is not None:
        plan = plan.model_copy(
            update={
                "current_run_id": pointer.run_id,
                "canary_run_id": pointer.canary_run_id,
                "shadow_run_id": pointer.shadow_run_id,
            }
        )
    if request.gate is None or request.rollback:
        return plan
    completing = request.canary_percent is None and not request.shadow
    if pointer is None:
        skipped = "a new alias always passes its gate"
    elif pointer.run_id == request.run_id:
        skipped = f"run {request.run_id!r} already serves alias {request.alias!r}"
    elif completing and request.run_id in (pointer.canary_run_id, pointer.shadow_run_id):
        kind = "canary" if request.run_id == pointer.canary_run_id else "shadow"
        skipped = f"completes the rollout of alias {request.alias!r}'s {kind}"
    else:
        return plan.model_copy(update={"run_gate": True})
    return plan.model_copy(update={"gate_skipped": skipped})


def check_comparable(runs_root: Path, candidate: str, current: str, field: str) -> None:
    """``InvalidConfig`` unless the two complete runs predict the same kind of output."""
    try:
        first = read_record(require_complete_run(runs_root, candidate))
        second = read_record(require_complete_run(runs_root, current))
    except OSError as err:
        raise failure(INVALID_CONFIG, f"{field}: cannot read the runs' records ({err})") from None
    aliases.check_same_outputs(first, second, field)


def update_rollout(
    runs_root: Path, update: AliasUpdate, promoted_by: str | None
) -> tuple[BertPromoteOutput, ServedRun | None]:
    """Apply ``update`` to the alias's pointer: the candidate (a canary, a shadow, or the
    alias's run) only if it can be served (as ``promote_servable``) and, for a canary or
    shadow, predicts what the alias's run predicts (``InvalidConfig`` otherwise)."""
    request = update.request
    served: list[ServedRun] = []
    kind = "canary_percent" if request.canary_percent is not None else "shadow"

    def compatible(alias_run_id: str) -> None:
        assert request.run_id is not None
        check_comparable(runs_root, request.run_id, alias_run_id, kind)

    candidate = request.run_id
    result = aliases.apply_rollout(
        runs_root,
        request,
        promoted_by,
        expected_current=update.expected_current_run_id,
        check_current=update.check_current,
        servable=(
            (lambda: _servable_locks(runs_root, candidate, served))
            if candidate is not None
            else None
        ),
        compatible=compatible,
    )
    return result, (served[-1] if served else None)


class PromotionActivities:
    """``tracking``: with an MLflow server and a registered model name, each promotion is
    mirrored to MLflow's model registry (the runs volume stays what the inferencer serves)."""

    def __init__(
        self,
        runs_root: Path,
        tracking: TrackingConfig = TrackingConfig(),
        inference_task_queue: str = INFERENCE_TASK_QUEUE,
        gate_queue_timeout: timedelta = timedelta(minutes=10),
    ) -> None:
        self._runs_root = runs_root
        self._tracking = tracking
        self._inference_task_queue = inference_task_queue
        self._gate_queue_timeout = gate_queue_timeout

    @activity.defn(name=PROMOTE_ACTIVITY)
    async def promote_alias(self, request: BertPromoteInput) -> BertPromoteOutput:
        # The workflow run id makes a retry of this promotion recognise its own write.
        promoted_by = activity.info().workflow_run_id
        if request.run_id is None:  # only a rollback names no run; it runs update_alias
            raise failure(INVALID_CONFIG, "run_id: required field is missing")
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

    @activity.defn(name=PLAN_PROMOTION_ACTIVITY)
    async def plan_promotion(self, request: BertPromoteInput) -> PromotionPlan:
        return await asyncio.to_thread(
            plan_rollout,
            self._runs_root,
            request,
            self._inference_task_queue,
            self._gate_queue_timeout.total_seconds(),
        )

    @activity.defn(name=UPDATE_ALIAS_ACTIVITY)
    async def update_alias(self, update: AliasUpdate) -> BertPromoteOutput:
        promoted_by = activity.info().workflow_run_id
        result, served = await asyncio.to_thread(
            update_rollout, self._runs_root, update, promoted_by
        )
        if served is not None:
            exported = await asyncio.to_thread(has_export, served.model_dir)
            result = result.model_copy(update={"exported": exported})
        log.info(
            "alias.updated",
            alias=result.alias,
            run_id=result.run_id,
            canary_run_id=result.canary_run_id,
            canary_percent=result.canary_percent,
            shadow_run_id=result.shadow_run_id,
            rollback=update.request.rollback,
        )
        # Only a move of the alias's own run is mirrored: the registry has no canaries.
        if not update.request.rollback and result.run_id == update.request.run_id:
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
