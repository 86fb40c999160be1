"""Driving the inference workflow from tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from temporalio.client import Client

from shared.types import INFERENCE_WORKFLOW, BertInferenceRequest, BertInferenceResult

WORDS = ["the movie was good fun", "an awful boring film", "so wonderful and nice", "sad day"]


def request_texts(index: int, count: int) -> list[str]:
    return [f"{WORDS[(index + i) % len(WORDS)]} {'really ' * (i % 5)}" for i in range(count)]


@dataclass
class Load:
    latencies: list[float]
    results: list[BertInferenceResult]


async def concurrent_inferences(
    client: Client, task_queue: str, run_id: str, requests: int, texts_per_request: int
) -> Load:
    """``requests`` executions started together; each latency is start → result."""

    async def one(index: int) -> tuple[float, BertInferenceResult]:
        started = time.perf_counter()
        result = await client.execute_workflow(
            INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id=run_id, texts=request_texts(index, texts_per_request)),
            id=f"load-{uuid.uuid4()}",
            task_queue=task_queue,
            result_type=BertInferenceResult,
        )
        return time.perf_counter() - started, result

    outcomes = await asyncio.gather(*(one(i) for i in range(requests)))
    return Load([latency for latency, _ in outcomes], [result for _, result in outcomes])
