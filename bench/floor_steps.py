"""How Temporal's own cost for a workflow with one local activity grows with the activity's
duration, on the local dev server: the floor ``make bench`` compares small requests with.

    python -m bench.floor_steps [--requests 30] [--write]

For each hold time, ``BenchFloorLocalActivity`` (its activity sleeping that long) is
executed ``--requests`` times after three warm-ups; the table shows the p50 latency as the
client sees it and what Temporal adds to the activity's own time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bench.bench_data import temporal_cli
from bench.compare import DOCS, replace_section

SECTION = "## Temporal's floor for a workflow with one local activity"
HOLDS_MS = (0, 5, 10, 20, 30, 40, 60, 100)
QUEUE = "bench-floor-steps"


async def measure(requests: int) -> dict[int, float]:
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from bench.floors import FLOOR_ACTIVITIES, FLOOR_WORKFLOWS, FloorLocalActivityWorkflow

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        dev_server_log_level="error",
    )
    p50: dict[int, float] = {}
    try:
        worker = Worker(
            env.client,
            task_queue=QUEUE,
            workflows=FLOOR_WORKFLOWS,
            activities=FLOOR_ACTIVITIES,
            activity_executor=ThreadPoolExecutor(max_workers=4),
        )
        async with worker:
            for hold in HOLDS_MS:
                samples = []
                for index in range(requests + 3):
                    started = time.perf_counter()
                    await env.client.execute_workflow(
                        FloorLocalActivityWorkflow.run,
                        {"hold_seconds": hold / 1000},
                        id=f"floor-steps-{uuid.uuid4()}",
                        task_queue=QUEUE,
                    )
                    if index >= 3:
                        samples.append(1000 * (time.perf_counter() - started))
                p50[hold] = statistics.median(samples)
    finally:
        await env.shutdown()
    return p50


def report(p50: dict[int, float], command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`. The local dev server (`temporal server start-dev`, in-memory), "
        "the Python SDK's client and worker in one process; p50 of each hold time.",
        "",
        "| local activity holds (ms) | workflow returns after (p50 ms) | Temporal adds (ms) |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {hold} | {p50[hold]:.1f} | {p50[hold] - hold:.1f} |" for hold in HOLDS_MS]
    lines += [
        "",
        "What Temporal adds is not constant: the latency moves in steps as the activity gets "
        "longer, so an instant activity's floor understates what the same call shape costs a "
        "request that computes for a few tens of milliseconds. `make bench` therefore "
        "compares a small inference request with a floor whose activity holds as long as the "
        "request's classification.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--write", action="store_true", help=f"write the table to {DOCS}")
    args = parser.parse_args()
    command = "python -m bench.floor_steps" + (
        f" --requests {args.requests}" if args.requests != 30 else ""
    )
    text = report(asyncio.run(measure(args.requests)), command)
    print(text)
    if args.write:
        replace_section(DOCS, SECTION, text)


if __name__ == "__main__":
    main()
