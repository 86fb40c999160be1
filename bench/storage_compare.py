"""Runs on object storage vs the shared filesystem: a MiniLM run's wall time and a promoted
run's first requests.

A Temporal dev server, moto's S3 server (a real HTTP server process on loopback: requests,
conditional writes and multipart uploads as against a remote store, without the network's
latency), and two stacks of in-process workers on the packaged MiniLM and real tweets:

- filesystem: one trainer and one inferencer sharing one runs folder (``BERT_RUNS_DIR``);
- object store: a trainer and an inferencer with private folders, sharing only a bucket
  prefix (``BERT_RUNS_URI``).

Measured: an experiment of one run (1 epoch), from start to result (the commit included;
for the store, the upload and the conditional ``run.json`` write), alternating
filesystem / store ``--repeats`` times; goal: store <= 1.10x filesystem. Then the run is
promoted and served by alias: the first request on an inferencer that never saw it (cold:
for the store, the download into its cache; then the model load) and the next one (warm).

    python -m bench.storage_compare [--train-rows 1024] [--repeats 2] [--write]

``--write`` replaces the "## Runs on object storage" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SECTION = "## Runs on object storage"
GOAL_RATIO = 1.10
TEXTS = ["what a great day", "this is awful", "not sure about this one", "love it"]


def step(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def train_once(
    client: Any, queue: str, model_dir: Path, data: Any, seed: int
) -> tuple[float, Any]:
    """One experiment of one run; a fresh ``seed`` per call keeps the run from being reused."""
    from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput

    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": f"bench-store-{uuid.uuid4().hex[:8]}",
            "runs": [
                {
                    "model_name": str(model_dir),
                    "train_file": str(data.train_csv),
                    "validation_file": str(data.eval_csv),
                    "text_column": "text",
                    "label_column": "label",
                    "num_epochs": 1,
                    "batch_size": 16,
                    "max_seq_length": 128,
                    "seed": seed,
                    "use_gpu": False,
                }
            ],
        }
    )
    started = time.perf_counter()
    output = await client.execute_workflow(
        FINE_TUNING_WORKFLOW,
        experiment,
        id=experiment.experiment_name,
        task_queue=queue,
        result_type=BertExperimentOutput,
    )
    return time.perf_counter() - started, output.runs[0]


async def first_requests(client: Any, queues: tuple[str, str], run_id: str) -> tuple[float, float]:
    """Promote ``run_id`` and time the first request by alias and the one after it."""
    from shared.types import (
        INFERENCE_WORKFLOW,
        PROMOTE_WORKFLOW,
        BertInferenceRequest,
        BertInferenceResult,
        BertPromoteInput,
        BertPromoteOutput,
    )

    alias = f"bench-{uuid.uuid4().hex[:8]}"
    await client.execute_workflow(
        PROMOTE_WORKFLOW,
        BertPromoteInput(run_id=run_id, alias=alias),
        id=f"promote-{alias}",
        task_queue=queues[0],
        result_type=BertPromoteOutput,
    )
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        await client.execute_workflow(
            INFERENCE_WORKFLOW,
            BertInferenceRequest(alias=alias, texts=TEXTS),
            id=f"infer-{uuid.uuid4()}",
            task_queue=queues[1],
            result_type=BertInferenceResult,
        )
        timings.append(time.perf_counter() - started)
    return timings[0], timings[1]


async def run(args: argparse.Namespace) -> str:
    from temporalio.testing import WorkflowEnvironment

    from bench.bench_data import prepare_data, temporal_cli
    from bert_finetune.demo_data import stage_minilm
    from services.inferencer.worker import build_inferencer_worker
    from services.trainer.worker import build_trainer_worker
    from shared import storage
    from shared.converter import data_converter
    from shared.storage.objects import ObjectStore
    from shared.storage.run_store import RunStore
    from tests.helpers.exports import wait_for_export
    from tests.helpers.s3 import moto_server

    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    data = prepare_data(work, args.train_rows, 256, 16)
    model_dir = stage_minilm(work / "minilm")
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter, dev_server_existing_path=temporal_cli()
    )
    with moto_server(work / "moto.log") as s3:
        os.environ.update(s3.env)
        uri = s3.new_bucket()

        def stack(name: str, store: bool) -> tuple[list[Any], tuple[str, str]]:
            queues = (f"train-{name}-{uuid.uuid4()}", f"infer-{name}-{uuid.uuid4()}")
            roots = [work / name / role for role in ("trainer", "inferencer")]
            if not store:
                roots = [work / name / "shared"] * 2
            for root in roots:
                root.mkdir(parents=True, exist_ok=True)
                if store:
                    storage.bind(root, RunStore(ObjectStore(uri), root))
            workers = [
                build_trainer_worker(
                    env.client,
                    task_queue=queues[0],
                    runs_root=roots[0],
                    graceful_shutdown=timedelta(seconds=5),
                    local_path_roots=(work,),
                ),
                build_inferencer_worker(
                    env.client, task_queue=queues[1], runs_root=roots[1], model_cache_size=2
                ),
            ]
            return workers, queues

        walls: dict[str, list[float]] = {"filesystem": [], "store": []}
        firsts: dict[str, tuple[float, float]] = {}
        async with AsyncExitStack() as running:
            stacks = {kind: stack(kind, kind == "store") for kind in walls}
            for workers, _ in stacks.values():
                for worker in workers:
                    await running.enter_async_context(worker)
            step("warm-up: one untimed run on the filesystem")
            _, warm_up = await train_once(
                env.client, stacks["filesystem"][1][0], model_dir, data, seed=1
            )
            await wait_for_export(env.client, warm_up.run_id)
            last: dict[str, str] = {}
            for repeat in range(args.repeats):
                for kind in walls:
                    step(f"training {repeat + 1}/{args.repeats}: {kind}")
                    # The same seed on both stacks (each has its own store: nothing is reused).
                    wall, result = await train_once(
                        env.client, stacks[kind][1][0], model_dir, data, seed=100 + repeat
                    )
                    walls[kind].append(wall)
                    last[kind] = result.run_id
                    # Untimed: the export that follows the commit, so the next run does not
                    # share the CPU with it.
                    await wait_for_export(env.client, result.run_id)
            for kind in walls:
                step(f"first requests of a promoted run: {kind}")
                firsts[kind] = await first_requests(env.client, stacks[kind][1], last[kind])
    await env.shutdown()
    return report(walls, firsts, args)


def report(walls: dict[str, list[float]], firsts: dict[str, tuple[float, float]], args: Any) -> str:
    fs, store = statistics.median(walls["filesystem"]), statistics.median(walls["store"])
    ratio = store / fs
    verdict = "met" if ratio <= GOAL_RATIO else "**not met**"
    lines = [
        SECTION,
        "",
        f"`python -m bench.storage_compare --train-rows {args.train_rows} --repeats "
        f"{args.repeats}` on {platform.machine()}, {os.cpu_count()} CPUs: the packaged MiniLM, "
        "1 epoch, batch 16, real tweets; the store is moto's S3 server on loopback (requests, "
        "conditional writes and multipart uploads as against a remote store, without network "
        "latency: add the model's size over your link's bandwidth for a real bucket).",
        "",
        "| measure | filesystem | object store | ratio | goal |",
        "|---|---|---|---|---|",
        f"| experiment wall time (median of {args.repeats}) | {fs:.1f} s | {store:.1f} s | "
        f"{ratio:.2f}x | <= {GOAL_RATIO:.2f}x: {verdict} |",
        f"| first request by alias after a promotion (cold) | {firsts['filesystem'][0]:.2f} s | "
        f"{firsts['store'][0]:.2f} s | {firsts['store'][0] / firsts['filesystem'][0]:.2f}x | |",
        f"| the next request (warm) | {firsts['filesystem'][1]:.3f} s | "
        f"{firsts['store'][1]:.3f} s | {firsts['store'][1] / firsts['filesystem'][1]:.2f}x | |",
        "",
        "Cold on the store includes downloading the commit into the inferencer's cache; the "
        "warm request reads `run.json` and the alias pointer from the store (two small GETs) "
        "and serves the cached model.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    current = DOCS.read_text(encoding="utf-8")
    if SECTION in current:
        before, _, rest = current.partition(SECTION)
        following = rest.find("\n## ")
        after = rest[following + 1 :] if following >= 0 else ""
        current = before + text + "\n" + after
    else:
        current = current.rstrip("\n") + "\n\n" + text
    DOCS.write_text(current, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    text = asyncio.run(run(args))
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
