"""Latency: a warm 8-text request through ``BertInferenceWorkflow`` vs Temporal's own floors
for each call shape (a workflow with one activity, with one local activity, an Update)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_data import FLOOR_QUEUE, Row, step, verdict
from bench.inference_compare import request


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Latencies:
    samples: dict[str, list[float]] = field(default_factory=dict)

    def p50_ms(self, name: str) -> float:
        return percentile(self.samples[name], 50) * 1000

    def mean_ms(self, name: str) -> float:
        return 1000 * statistics.fmean(self.samples[name])

    def p95_ms(self, name: str) -> float:
        return percentile(self.samples[name], 95) * 1000


async def measure_latencies(
    client: Any,
    onnx_run: str,
    torch_run: str,
    texts: list[str],
    requests: int,
    hold_seconds: float,
) -> Latencies:
    """Each call shape in turn, round-robin, so machine noise hits them alike.
    ``hold_seconds``: how long the timed floor's local activity takes (our classification's)."""
    from bench.floors import (
        FloorActivityWorkflow,
        FloorLocalActivityWorkflow,
        FloorUpdateWorkflow,
    )
    from shared.types import BertInferenceRequest

    payload = BertInferenceRequest(run_id=onnx_run, texts=texts[:8]).model_dump(mode="json")
    update_handle = await client.start_workflow(
        FloorUpdateWorkflow.run, id=f"bench-floor-update-{uuid.uuid4()}", task_queue=FLOOR_QUEUE
    )

    def floor(workflow: Any, **extra: float) -> Callable[[list[str]], Awaitable[Any]]:
        async def call(batch: list[str]) -> Any:
            return await client.execute_workflow(
                workflow.run,
                {**payload, "texts": batch, **extra},
                id=f"bench-floor-{uuid.uuid4()}",
                task_queue=FLOOR_QUEUE,
            )

        return call

    async def update(batch: list[str]) -> Any:
        return await update_handle.execute_update(
            FloorUpdateWorkflow.call, {**payload, "texts": batch}
        )

    shapes: dict[str, Callable[[list[str]], Awaitable[Any]]] = {
        "ours_onnx": lambda batch: request(client, onnx_run, batch),
        "ours_torch": lambda batch: request(client, torch_run, batch),
        "floor_local_activity": floor(FloorLocalActivityWorkflow),
        "floor_timed_local_activity": floor(FloorLocalActivityWorkflow, hold_seconds=hold_seconds),
        "floor_activity": floor(FloorActivityWorkflow),
        "floor_update": update,
    }
    latencies = Latencies({name: [] for name in shapes})
    for index in range(requests + 3):  # the first three rounds warm every path
        batch = [texts[(index * 8 + i) % len(texts)] for i in range(8)]
        for name, call in shapes.items():
            started = time.perf_counter()
            await call(batch)
            if index >= 3:
                latencies.samples[name].append(time.perf_counter() - started)
    await update_handle.signal(FloorUpdateWorkflow.finish)
    return latencies


def in_process_latency(run_dir: Path, texts: list[str], requests: int) -> list[float]:
    """The 8-text classification alone, without Temporal: the compute inside our request."""
    from services.inferencer.model_cache import load_model

    classifier = load_model(run_dir, "cpu").classifier
    samples = []
    for index in range(requests + 3):
        batch = [texts[(index * 8 + i) % len(texts)] for i in range(8)]
        started = time.perf_counter()
        classifier.classify(batch, 128, 32, lambda done, size: None)
        if index >= 3:
            samples.append(time.perf_counter() - started)
    return samples


async def compare_latency(
    client: Any, runs_root: Path, onnx_run: str, torch_run: str, texts: list[str], requests: int
) -> Latencies:
    """Every call shape's latency, and the in-process classification the timed floor holds."""
    step(f"latency: {requests} warm 8-text requests per call shape")
    # First the classification alone: the timed floor's activity takes as long.
    in_process = await asyncio.to_thread(in_process_latency, runs_root / onnx_run, texts, requests)
    latencies = await measure_latencies(
        client, onnx_run, torch_run, texts, requests, hold_seconds=statistics.median(in_process)
    )
    latencies.samples["in_process_onnx"] = in_process
    return latencies


def latency_rows(lat: Latencies) -> list[Row]:
    overhead = lat.p50_ms("ours_onnx") - lat.p50_ms("floor_timed_local_activity")
    instant_overhead = lat.p50_ms("ours_onnx") - lat.p50_ms("floor_local_activity")
    return [
        (
            "warm 8-text request p50 ms: workflow vs floor (workflow + 1 local activity "
            "that takes as long as our 8-text classification)",
            f"{lat.p50_ms('ours_onnx'):.1f}",
            f"{lat.p50_ms('floor_timed_local_activity'):.1f}",
            f"{overhead:+.1f} ms",
            f"≤ +30 ms: {verdict(overhead <= 30)}",
            f"p95 {lat.p95_ms('ours_onnx'):.1f} vs "
            f"{lat.p95_ms('floor_timed_local_activity'):.1f}; the 8-text classification "
            f"alone (what the floor's activity holds): {lat.p50_ms('in_process_onnx'):.1f} ms",
        ),
        (
            "warm 8-text request p50 ms: workflow vs floor with an instant local activity",
            f"{lat.p50_ms('ours_onnx'):.1f}",
            f"{lat.p50_ms('floor_local_activity'):.1f}",
            f"{instant_overhead:+.1f} ms",
            "",
            f"means {lat.mean_ms('ours_onnx'):.1f} vs {lat.mean_ms('floor_local_activity'):.1f}; "
            "the instant floor is bimodal (see below)",
        ),
        (
            "warm 8-text request p50 ms: workflow, PyTorch path vs the timed floor",
            f"{lat.p50_ms('ours_torch'):.1f}",
            f"{lat.p50_ms('floor_timed_local_activity'):.1f}",
            f"{lat.p50_ms('ours_torch') - lat.p50_ms('floor_timed_local_activity'):+.1f} ms",
            "",
            "",
        ),
        (
            "other floors p50 ms: workflow + 1 activity; Update running a local activity",
            "",
            f"{lat.p50_ms('floor_activity'):.1f}; {lat.p50_ms('floor_update'):.1f}",
            "",
            "",
            "for comparison (other call shapes)",
        ),
    ]


def floor_notes(lat: Latencies) -> str:
    """The report's paragraph on which floor our call shape is measured against."""
    return (
        "The latency floor for our call shape is a workflow whose one local activity holds "
        "for as long as our 8-text classification takes in-process (measured just before): "
        "Temporal's cost for a workflow + local activity grows in steps with the activity's "
        "duration on this dev server (`python -m bench.floor_steps`, below), so the instant "
        f"floor (p50 {lat.p50_ms('floor_local_activity'):.1f} ms, mean "
        f"{lat.mean_ms('floor_local_activity'):.1f} ms: its samples split into a fast and a "
        "slow group) is a shape no request that computes anything can match."
    )
