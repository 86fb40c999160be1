"""Models warm ahead of traffic: every inferencer keeps the runs its aliases point at loaded.

A promotion moves an alias pointer on the runs volume; the next request by that alias would
load the new run (seconds, more from a slow volume). Each inferencer instead looks at the
aliases every ``BERT_WARM_ALIASES_SECONDS`` (10; 0 turns it off) and loads, in the
background, the run of every alias that is new or moved since its last look (at start: all
of them, up to the cache size), and again any such run whose model changed on disk since it
was loaded (its ONNX export landed after the commit, or an overwrite replaced it). So a
promotion, or an export of a promoted run, is warm on every pod within one interval, with
no coordination: no Temporal, no broadcast. An alias's canary and shadow runs are warmed with
it. Requests never wait for it; one that arrives first loads the model itself (HTTP on a
loader thread, the workflow as a regular activity).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from services.inferencer.activities import served_run
from services.inferencer.model_cache import ModelCache
from shared.aliases import list_pointers
from shared.health import WorkerHealth
from shared.logging import get_logger

log = get_logger(__name__)

DEVICE = "cpu"  # what HTTP and workflow requests without use_gpu are served on


class AliasWarmer:
    """A worker sidecar (``shared.service.Sidecar``) that warms aliased runs."""

    def __init__(
        self, runs_root: Path, cache: ModelCache, interval_seconds: float, limit: int
    ) -> None:
        self._runs_root = runs_root
        self._cache = cache
        self._interval = interval_seconds
        self._limit = limit
        self._seen: dict[str, tuple[str, ...]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, health: WorkerHealth) -> None:
        self._task = asyncio.create_task(self._loop())

    def draining(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception as err:  # never fatal: requests load what they need
                log.warning("warm.failed", error=str(err)[:300])
            await asyncio.sleep(self._interval)

    def tick(self) -> list[str]:
        """Start loading what needs it; the run ids started."""
        # Each alias's runs: its own, then its canary or shadow.
        aliases = {
            alias: tuple(
                run_id
                for run_id in (pointer.run_id, pointer.canary_run_id, pointer.shadow_run_id)
                if run_id is not None
            )
            for alias, pointer in list_pointers(self._runs_root).items()
        }
        moved = [alias for alias, runs in sorted(aliases.items()) if self._seen.get(alias) != runs]
        kept = [alias for alias in sorted(aliases) if alias not in moved]
        started: list[str] = []
        for alias in [*moved, *kept]:
            for run_id in aliases[alias]:
                if len(started) >= self._limit:
                    break
                try:
                    model_dir = served_run(self._runs_root, run_id, alias).model_dir
                    # A moved alias is always warmed; one that stayed only when its model went
                    # stale while loaded (export landed, overwrite), never because the LRU
                    # evicted it for other traffic.
                    if (
                        alias in moved and not self._cache.is_current(model_dir, DEVICE)
                    ) or self._cache.stale(model_dir, DEVICE):
                        self._cache.warm(model_dir, DEVICE)
                        started.append(run_id)
                        log.info("model.warming", alias=alias, run_id=run_id)
                except Exception as err:  # an alias to a removed run: its requests will say so
                    log.warning("warm.skipped", alias=alias, run_id=run_id, error=str(err)[:300])
        self._seen = aliases
        return started
