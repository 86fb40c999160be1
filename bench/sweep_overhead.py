"""Sweep orchestration overhead: wall time of an N-trial sweep vs its trials' training time,
with the tokenized-dataset cache on and off.

Runs a real ``BertSweepWorkflow`` (random search over the learning rate) of a tiny BERT on
a local Temporal dev server, with one in-process trainer worker training one trial at a
time (``max_concurrent_trials`` 1, so training times add up without competing for the
CPU). The overhead is everything that is not ``training_time_seconds``: Temporal round trips
(child workflow, activity, proposals), data and model loading, tokenizing, evaluation and
saving. It also reports the sweep's history length (events per trial), which bounds sweep
size.

The same sweep (same proposals, every trial trained anew) runs with the runs root's token
cache (``services.trainer.training.token_cache``: the first trial tokenizes, the others read
its result) and without it (every trial tokenizes; the bench swaps the trainer's cache for
one that always tokenizes, in this process only), interleaved, the cache emptied before each
sweep. Per variant: the overhead per trial, and within the trials' own workflows the first
trial's overhead against the median of the others (where the cache shows).

``make bench`` runs this in ``bench.compare`` on its shared worker; standalone:

    python -m bench.sweep_overhead [--trials 8] [--rows 256] [--epochs 1] [--halving]
                                   [--repeats 1] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_data import Row, step, temporal_cli, verdict
from bench.sweep_compare import clear_token_cache, wait_for_export

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTION = "## Sweep orchestration overhead"
GOAL_SECONDS = 0.25  # per trial, on the tiny model (issue 24)
CACHED, UNCACHED = "token cache on", "token cache off"


@dataclass(frozen=True)
class OverheadSetup:
    trials: int = 8
    rows: int = 256
    epochs: int = 1
    halving: bool = False
    repeats: int = 1  # sweeps per variant, interleaved (on, off, off, on, ...)


@dataclass(frozen=True)
class OverheadFigures:
    variant: str
    trials: int
    pruned: int
    wall: float  # the sweep, start to result
    training: float  # the sum of every activity execution's training_time_seconds
    events: int  # the sweep's own history
    # Per trial, in trial order: its run workflow's wall minus its training time.
    in_trial: list[float]

    @property
    def per_trial(self) -> float:
        return (self.wall - self.training) / self.trials

    @property
    def first_trial(self) -> float:
        return self.in_trial[0] if self.in_trial else 0.0

    @property
    def later_trials(self) -> float:
        """The median in-trial overhead of every trial but the first."""
        return statistics.median(self.in_trial[1:]) if len(self.in_trial) > 1 else 0.0

    def describe(self) -> str:
        return (
            f"{self.variant}: {self.wall:.1f} s wall, {self.training:.1f} s training, "
            f"{self.per_trial:.2f} s overhead per trial (first trial {self.first_trial:.2f} s, "
            f"later median {self.later_trials:.2f} s within the trial's workflow)"
        )


@dataclass
class OverheadComparison:
    setup: OverheadSetup
    runs: list[OverheadFigures]  # in the order they ran

    def variant(self, name: str) -> list[OverheadFigures]:
        return [r for r in self.runs if r.variant == name]

    def mean_per_trial(self, name: str) -> float | None:
        runs = self.variant(name)
        return statistics.fmean(r.per_trial for r in runs) if runs else None


@contextmanager
def token_cache(enabled: bool) -> Iterator[bool]:
    """With ``enabled`` False, the in-process trainer tokenizes every run anew (the cache's
    reads and writes skipped). Yields False when this trainer has no cache to switch off."""
    from services.trainer.training import fine_tune as module

    original = getattr(module, "TokenCache", None)
    if enabled or original is None:
        yield original is not None
        return

    class Uncached(original):  # type: ignore[misc, valid-type]
        def get_or_build(self, key: str, split: str, build: Any) -> Any:
            return build()

    module.TokenCache = Uncached  # type: ignore[misc]
    try:
        yield True
    finally:
        module.TokenCache = original  # type: ignore[misc]


async def measure_overhead(
    client: Any, queue: str, runs_root: Path, root: Path, setup: OverheadSetup
) -> OverheadComparison:
    """The tiny BERT and its data under ``root`` (a path the worker may read), one untimed
    warm-up run, then the sweep with the token cache on and off, interleaved."""
    from shared.types import FINE_TUNING_WORKFLOW, BertExperimentOutput
    from tests.tiny import build_tiny_bert, sentiment_rows, write_csv

    model = build_tiny_bert(root / "tiny-bert")
    train = write_csv(root / "train.csv", sentiment_rows(setup.rows, seed=1, string_labels=True))
    validation = write_csv(root / "validation.csv", sentiment_rows(64, seed=2, string_labels=True))
    base = {
        "model_name": str(model),
        "train_file": str(train),
        "validation_file": str(validation),
        "num_epochs": setup.epochs,
        "batch_size": 16,
        "max_seq_length": 32,
        "use_gpu": False,
    }
    # Warm-up: the first training in a process pays one-off imports.
    step("sweep overhead: warm-up run of the tiny BERT, untimed")
    warm_up = await client.execute_workflow(
        FINE_TUNING_WORKFLOW,
        {"experiment_name": f"overhead-warm-up-{uuid.uuid4().hex[:6]}", "runs": [base]},
        id=f"overhead-warm-up-{uuid.uuid4()}",
        task_queue=queue,
        result_type=BertExperimentOutput,
    )
    await wait_for_export(client, warm_up.runs[0].run_id)
    order = [CACHED, UNCACHED, UNCACHED, CACHED] * setup.repeats
    runs: list[OverheadFigures] = []
    for variant in order[: 2 * setup.repeats]:
        with token_cache(variant == CACHED) as switchable:
            if not switchable:
                step("sweep overhead: this trainer has no token cache; one variant only")
                if variant == UNCACHED:
                    continue
            step(f"sweep overhead: {setup.trials}-trial sweep, {variant}")
            clear_token_cache(runs_root)
            figures = await _sweep(client, queue, base, setup, variant)
        step(f"sweep overhead: {figures.describe()}")
        runs.append(figures)
    return OverheadComparison(setup, runs)


async def _sweep(
    client: Any, queue: str, base: dict[str, Any], setup: OverheadSetup, variant: str
) -> OverheadFigures:
    from services.trainer.orchestration.run_workflow import run_workflow_id
    from shared.sweep_types import SWEEP_WORKFLOW, BertSweepOutput

    sweep: dict[str, Any] = {
        "sweep_name": f"overhead-{uuid.uuid4().hex[:8]}",
        "base": base,
        "space": {"learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}},
        "strategy": "random",  # the same seed: the same proposals in every sweep
        "num_trials": setup.trials,
        "max_concurrent_trials": 1,
        # Train every trial: never reuse an earlier sweep's finished run of equal config.
        "overwrite": True,
    }
    if setup.halving:
        sweep["early_stopping"] = {"type": "successive_halving", "reduction_factor": 2}
    started = time.perf_counter()
    handle = await client.start_workflow(
        SWEEP_WORKFLOW,
        sweep,
        id=sweep["sweep_name"],
        task_queue=queue,
        result_type=BertSweepOutput,
    )
    output = await handle.result()
    wall = time.perf_counter() - started
    if output.best_run_id is not None:
        await wait_for_export(client, output.best_run_id)  # not beside the next sweep
    history = await handle.fetch_history()
    training = 0.0
    in_trial = []
    for trial in output.trials:
        child = client.get_workflow_handle(run_workflow_id(handle.id, trial.run_id))
        trial_wall, trial_training = await _trial_times(client, child)
        training += trial_training
        in_trial.append(trial_wall - trial_training)
    return OverheadFigures(
        variant=variant,
        trials=len(output.trials),
        pruned=sum(t.state == "pruned" for t in output.trials),
        wall=wall,
        training=training,
        events=len(history.events),
        in_trial=in_trial,
    )


async def _trial_times(client: Any, child: Any) -> tuple[float, float]:
    """A trial's run workflow: (its wall time from first to last history event, the training
    time of every activity execution, since halving trains in segments)."""
    from temporalio.api.enums.v1 import EventType

    from shared.types import BertFineTuneResult

    training = 0.0
    first = last = None
    async for event in child.fetch_history_events():
        moment = event.event_time.ToNanoseconds() / 1e9
        first = moment if first is None else first
        last = moment
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            payloads = event.activity_task_completed_event_attributes.result.payloads
            (result,) = await client.data_converter.decode(payloads, [BertFineTuneResult])
            training += result.training_time_seconds
    return (last - first if first is not None and last is not None else 0.0), training


# ------------------------------------------------------------------------------- the report


def overhead_rows(o: OverheadComparison) -> list[Row]:
    """One row for ``bench.compare``: the overhead per trial, cache on vs off."""
    cached = o.mean_per_trial(CACHED)
    uncached = o.mean_per_trial(UNCACHED)
    on, off = o.variant(CACHED), o.variant(UNCACHED)
    quality = ""
    if on:
        quality = (
            f"within a trial's workflow: first trial {on[0].first_trial:.2f} s, later median "
            f"{on[0].later_trials:.2f} s"
        )
        if off:
            quality += f" (cache off: {off[0].first_trial:.2f} s, {off[0].later_trials:.2f} s)"
        quality += f"; history {on[0].events / on[0].trials:.1f} events per trial"
    setup = o.setup
    return [
        (
            f"sweep overhead s per trial (tiny BERT, {setup.trials} trials, {setup.rows} rows, "
            f"{setup.epochs} epoch): token cache on vs off",
            "" if cached is None else f"{cached:.2f}",
            "" if uncached is None else f"{uncached:.2f}",
            "" if cached is None or not uncached else f"{cached / uncached:.2f}x",
            f"≤ {GOAL_SECONDS} s: {verdict(cached is not None and cached <= GOAL_SECONDS)}",
            quality,
        )
    ]


def overhead_notes(o: OverheadComparison) -> str:
    return (
        f"Sweep overhead: a random sweep of the tests' tiny BERT over the learning rate, "
        f"{o.setup.trials} trials of {o.setup.rows} rows, {o.setup.epochs} epoch(s), one at a "
        "time; overhead = sweep wall − the trials' `training_time_seconds` (Temporal round "
        "trips, loading data and model, tokenizing, evaluating, saving). The same sweep with "
        "the token cache on and off (the trainer's cache swapped in this process for one "
        "that always tokenizes), interleaved, the cache emptied before each. Every run: "
        + "; ".join(r.describe() for r in o.runs)
        + "."
    )


def _report(command: str, o: OverheadComparison) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, CPU. A random sweep of a "
        f"tiny BERT over the learning rate, {o.setup.rows} training rows, {o.setup.epochs} "
        "epoch(s), one trial at a time on one in-process trainer worker and a local "
        "Temporal dev server; the token cache on and off, interleaved.",
        "",
        "| what | " + " | ".join(r.variant for r in o.runs) + " |",
        "|---|" + "---|" * len(o.runs),
        "| trials (pruned) | " + " | ".join(f"{r.trials} ({r.pruned})" for r in o.runs) + " |",
        "| sweep wall time | " + " | ".join(f"{r.wall:.1f} s" for r in o.runs) + " |",
        "| sum of the trials' `training_time_seconds` | "
        + " | ".join(f"{r.training:.1f} s" for r in o.runs)
        + " |",
        "| overhead (wall - training) per trial | "
        + " | ".join(f"{r.per_trial:.2f} s" for r in o.runs)
        + " |",
        "| within the trial's workflow: first trial, median of the others | "
        + " | ".join(f"{r.first_trial:.2f} s, {r.later_trials:.2f} s" for r in o.runs)
        + " |",
        "| sweep history, events per trial | "
        + " | ".join(f"{r.events / r.trials:.1f}" for r in o.runs)
        + " |",
        "",
        f"Goal: at most {GOAL_SECONDS} s of overhead per trial with the cache on. The "
        "overhead per trial includes loading data and model, tokenizing (or reading the "
        "cache), evaluation and saving, which `training_time_seconds` leaves out; Temporal's "
        "own share is a few round trips (child start, activity, proposal).",
    ]
    return "\n".join(lines)


def _write(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[end:] if end != -1 else "\n")
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


async def _standalone(setup: OverheadSetup, root: Path) -> OverheadComparison:
    from datetime import timedelta

    from temporalio.testing import WorkflowEnvironment

    from services.trainer.worker import build_trainer_worker
    from shared.converter import data_converter
    from shared.logging import configure_logging

    configure_logging("WARNING", "console")
    runs_root = root / "runs"
    runs_root.mkdir()
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
            return await measure_overhead(env.client, queue, runs_root, root, setup)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--halving", action="store_true", help="successive halving, factor 2")
    parser.add_argument("--repeats", type=int, default=1, help="sweeps per variant")
    parser.add_argument("--write", type=Path, help="replace this section of a markdown file")
    args = parser.parse_args()
    setup = OverheadSetup(args.trials, args.rows, args.epochs, args.halving, args.repeats)
    command = (
        f"python -m bench.sweep_overhead --trials {args.trials} --rows {args.rows} "
        f"--epochs {args.epochs} --repeats {args.repeats}" + (" --halving" if args.halving else "")
    )
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        measured = asyncio.run(_standalone(setup, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = _report(command, measured)
    print(report)
    if args.write:
        _write(args.write, report)


if __name__ == "__main__":
    main()
