"""Temporal's own floors: trivial workflows with each call shape, for ``make bench``.

Each does nothing but hand its input to a no-op activity and return the activity's result,
so the time a client waits for it is what Temporal itself costs for that call shape on this
server: a workflow with one activity, a workflow with one local activity, and an Update on
an already running workflow whose handler runs one local activity.

With ``hold_seconds`` in the payload the activity takes that long (sleeping, the GIL
released, as ONNX Runtime releases it): the local-activity floor for a request whose
classification takes that long. An instant activity lets the workflow
finish before the client's wait for its result reaches the server about half the time, a
fast path no request that computes anything can take (the instant floor's latencies are
bimodal on the dev server: about 25 and about 70 ms).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

FLOOR_ACTIVITY = "bench_floor_echo"


@activity.defn(name=FLOOR_ACTIVITY)
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Returns its input at once, or after ``hold_seconds`` when the payload names them."""
    if hold := float(payload.get("hold_seconds", 0.0)):
        time.sleep(hold)
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
FLOOR_ACTIVITIES = [echo]
