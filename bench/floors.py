"""Temporal's own floors: trivial workflows with each call shape, for ``make bench``.

Each does nothing but hand its input to a no-op activity and return the activity's result,
so the time a client waits for it is what Temporal itself costs for that call shape on this
server: a workflow with one activity, a workflow with one local activity, and an Update on
an already running workflow whose handler runs one local activity.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

FLOOR_ACTIVITY = "bench_floor_echo"


@activity.defn(name=FLOOR_ACTIVITY)
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@workflow.defn(name="BenchFloorActivity")
class FloorActivityWorkflow:
    @workflow.run
    async def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await workflow.execute_activity(
            FLOOR_ACTIVITY, payload, start_to_close_timeout=timedelta(seconds=30)
        )


@workflow.defn(name="BenchFloorLocalActivity")
class FloorLocalActivityWorkflow:
    @workflow.run
    async def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await workflow.execute_local_activity(
            FLOOR_ACTIVITY, payload, start_to_close_timeout=timedelta(seconds=30)
        )


@workflow.defn(name="BenchFloorUpdate")
class FloorUpdateWorkflow:
    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.update
    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await workflow.execute_local_activity(
            FLOOR_ACTIVITY, payload, start_to_close_timeout=timedelta(seconds=30)
        )

    @workflow.signal
    def finish(self) -> None:
        self._done = True


FLOOR_WORKFLOWS = [FloorActivityWorkflow, FloorLocalActivityWorkflow, FloorUpdateWorkflow]
