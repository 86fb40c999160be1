"""Sweep orchestration overhead: wall time of an N-trial sweep vs its trials' training time.

Runs a real ``BertSweepWorkflow`` (random search over the learning rate) of a tiny BERT on
a local Temporal dev server, with one in-process trainer worker training one trial at a
time (``max_concurrent_trials`` 1, so training times add up without competing for the
CPU). The overhead is everything that is not ``training_time_seconds``: Temporal round trips
(child workflow, activity, proposals), data and model loading, evaluation and saving. It
also reports the sweep's history length (events per trial), which bounds sweep size.

    python -m bench.sweep_overhead [--trials 8] [--rows 256] [--epochs 1] [--halving]
                                   [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_data import temporal_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTION = "## Sweep orchestration overhead"


async def _measure(args: argparse.Namespace, root: Path) -> dict:
    from datetime import timedelta

    from temporalio.testing import WorkflowEnvironment

    from services.trainer.orchestration.run_workflow import run_workflow_id
    from services.trainer.worker import build_trainer_worker
    from shared.converter import data_converter
    from shared.logging import configure_logging
    from shared.sweep_types import SWEEP_WORKFLOW, BertSweepOutput
    from shared.types import FINE_TUNING_WORKFLOW, BertExperimentOutput
    from tests.tiny import build_tiny_bert, sentiment_rows, write_csv

    configure_logging("WARNING", "console")
    model = build_tiny_bert(root / "tiny-bert")
    train = write_csv(root / "train.csv", sentiment_rows(args.rows, seed=1, string_labels=True))
    validation = write_csv(root / "validation.csv", sentiment_rows(64, seed=2, string_labels=True))
    runs_root = root / "runs"
    runs_root.mkdir()
    base = {
        "model_name": str(model),
        "train_file": str(train),
        "validation_file": str(validation),
        "num_epochs": args.epochs,
        "batch_size": 16,
        "max_seq_length": 32,
        "use_gpu": False,
    }
    sweep = {
        "sweep_name": "bench",
        "base": base,
        "space": {"learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}},
        "strategy": "random",
        "num_trials": args.trials,
        "max_concurrent_trials": 1,
    }
    if args.halving:
        sweep["early_stopping"] = {"type": "successive_halving", "reduction_factor": 2}
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter,
        dev_server_existing_path=temporal_cli(),
        dev_server_log_level="error",
    )
    async with env:
        queue = f"bench-{uuid.uuid4()}"
        worker = build_trainer_worker(
            env.client,
            task_queue=queue,
            runs_root=runs_root,
            graceful_shutdown=timedelta(seconds=5),
            local_path_roots=[root],  # the bench's tiny model and data
        )
        async with worker:
            # Warm-up: the first training in a process pays one-off imports.
            await env.client.execute_workflow(
                FINE_TUNING_WORKFLOW,
                {"experiment_name": "warmup", "runs": [base]},
                id=f"warmup-{uuid.uuid4()}",
                task_queue=queue,
                result_type=BertExperimentOutput,
            )
            started = time.perf_counter()
            handle = await env.client.start_workflow(
                SWEEP_WORKFLOW,
                sweep,
                id=f"bench-sweep-{uuid.uuid4()}",
                task_queue=queue,
                result_type=BertSweepOutput,
            )
            output = await handle.result()
            wall = time.perf_counter() - started
            history = await handle.fetch_history()
            training = 0.0
            for trial in output.trials:
                child = env.client.get_workflow_handle(run_workflow_id(handle.id, trial.run_id))
                training += await _training_seconds(env.client, child)
    return {
        "trials": len(output.trials),
        "pruned": sum(t.state == "pruned" for t in output.trials),
        "wall": wall,
        "training": training,
        "events": len(history.events),
    }


async def _training_seconds(client: Any, child: Any) -> float:
    """Training time of every activity execution of a trial (halving trains in segments)."""
    from temporalio.api.enums.v1 import EventType

    from shared.types import BertFineTuneResult

    total = 0.0
    async for event in child.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            payloads = event.activity_task_completed_event_attributes.result.payloads
            (result,) = await client.data_converter.decode(payloads, [BertFineTuneResult])
            total += result.training_time_seconds
    return total


def _report(args: argparse.Namespace, m: dict) -> str:
    overhead = m["wall"] - m["training"]
    command = (
        f"python -m bench.sweep_overhead --trials {args.trials} --rows {args.rows} "
        f"--epochs {args.epochs}" + (" --halving" if args.halving else "")
    )
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {os.cpu_count()} cores, {platform.machine()}, CPU. A random sweep of a "
            f"tiny BERT over the learning rate, {args.rows} training rows, {args.epochs} "
            "epoch(s), one trial at a time on one in-process trainer worker and a local "
            "Temporal dev server.",
            "",
            "| what | measured |",
            "|---|---|",
            f"| trials (pruned) | {m['trials']} ({m['pruned']}) |",
            f"| sweep wall time | {m['wall']:.1f} s |",
            f"| sum of the trials' `training_time_seconds` | {m['training']:.1f} s |",
            f"| overhead (wall - training) | {overhead:.1f} s, {overhead / m['trials']:.2f} s "
            "per trial |",
            f"| sweep history | {m['events']} events, {m['events'] / m['trials']:.1f} per trial |",
            "",
            "The overhead per trial includes loading data and model, evaluation and saving, "
            "which `training_time_seconds` leaves out; Temporal's own share is a few "
            "round trips (child start, activity, proposal).",
        ]
    )


def _write(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[end:] if end != -1 else "\n")
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--halving", action="store_true", help="successive halving, factor 2")
    parser.add_argument("--write", type=Path, help="replace this section of a markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measured = asyncio.run(_measure(args, Path(folder)))
    report = _report(args, measured)
    print(report)
    if args.write:
        _write(args.write, report)


if __name__ == "__main__":
    main()
