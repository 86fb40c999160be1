"""The ``promote_alias`` local activity: move an alias pointer to a complete run.

Async, with the file work on the event loop's default executor: it never waits behind a
training run for the trainer's activity thread pool, and it runs the same on a controller
worker that registers no training at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio import activity

from shared import aliases
from shared.logging import get_logger
from shared.types import PROMOTE_ACTIVITY, BertPromoteInput, BertPromoteOutput

log = get_logger(__name__)


class PromotionActivities:
    def __init__(self, runs_root: Path) -> None:
        self._runs_root = runs_root

    @activity.defn(name=PROMOTE_ACTIVITY)
    async def promote_alias(self, request: BertPromoteInput) -> BertPromoteOutput:
        # The workflow run id makes a retry of this promotion recognise its own write.
        promoted_by = activity.info().workflow_run_id
        result = await asyncio.to_thread(
            aliases.promote, self._runs_root, request.run_id, request.alias, promoted_by
        )
        log.info(
            "alias.promoted",
            alias=result.alias,
            run_id=result.run_id,
            previous_run_id=result.previous_run_id,
        )
        return result
