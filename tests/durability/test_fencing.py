"""A partitioned trainer keeps training while Temporal starts the next attempt elsewhere.

Two real trainer processes: the first reaches Temporal through a proxy that the test cuts
(a network partition: the process and its training go on, its heartbeats never arrive); the
server times the attempt out and the second trainer takes the run over. Whatever the stale
attempt does afterwards, it must never overwrite or delete the newer attempt's work, and
once the run is complete nothing may change it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

from temporalio.client import Client

from services.trainer import fencing
from shared.runs import RUN_MANIFEST
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.durability.harness import (
    WorkerProcess,
    long_config,
    long_run_csv,
    predicts_sentiment,
    sealed_checkpoint,
    task_queue,
    wait_for,
)
from tests.durability.proxy import partition_proxy

HEARTBEAT_TIMEOUT_SECONDS = 5
# Long enough that the partitioned trainer is still training when the second one takes
# over (the takeover needs the heartbeat timeout, the retry backoff and model loading).
ROWS, EPOCHS = 2000, 12  # 6,000 steps at batch size 4


def _tree(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under the run folder with its size and modification time."""
    state = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_file():
            stat = path.stat()
            state[str(path.relative_to(run_dir))] = (stat.st_size, stat.st_mtime_ns)
    return state


class RunJsonWatcher:
    """Polls ``run.json`` and records every distinct version of it that ever existed."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RUN_MANIFEST
        self.versions: list[dict] = []
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            try:
                manifest = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                manifest = None
            if manifest is not None and (not self.versions or manifest != self.versions[-1]):
                self.versions.append(manifest)
            await asyncio.sleep(0.05)

    def __enter__(self) -> RunJsonWatcher:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_a_partitioned_attempt_never_touches_the_newer_attempts_run(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path, rows=ROWS)
    config = long_config(tiny_model, train, validation, num_epochs=EPOCHS, checkpoint_steps=50)
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "partition",
            "runs": [config],
            "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS,
        }
    )
    run_dir = runs_root / experiment.run_ids()[0]
    max_steps = ROWS // 4 * EPOCHS
    with partition_proxy(address) as proxy:
        stale = WorkerProcess(proxy.address, queue, runs_root, tmp_path / "partitioned.log")
        newer: WorkerProcess | None = None
        try:
            handle = await client.start_workflow(
                FINE_TUNING_WORKFLOW,
                experiment,
                id=f"partition-{uuid.uuid4()}",
                task_queue=queue,
                result_type=BertExperimentOutput,
            )
            with RunJsonWatcher(run_dir) as run_json:
                await wait_for(lambda: sealed_checkpoint(handle), "a sealed checkpoint", 120)
                proxy.cut()
                steps_at_cut = stale.steps_counter()
                newer = WorkerProcess(address, queue, runs_root, tmp_path / "newer.log")

                output = await asyncio.wait_for(handle.result(), timeout=420)
                (run,) = output.runs
                # The stale attempt noticed it was fenced off and stopped training.
                stopped = await wait_for(
                    lambda: _superseded(stale), "the stale attempt to stop", 120
                )
                finished_tree = _tree(run_dir)
                await asyncio.sleep(3 * fencing.RECHECK_SECONDS)
                assert _tree(run_dir) == finished_tree, "the run changed after it completed"

            # run.json was written once, by the attempt the server accepted.
            assert len(run_json.versions) == 1, [v.get("attempt") for v in run_json.versions]
            assert run_json.versions[0]["attempt"] == 2
            assert not stale.events("model.saved")
            assert newer.events("training.finished")[0]["global_step"] == max_steps
            assert stale.steps_counter() < max_steps - 50, "the stale attempt trained on"
            assert run.resumed_from_step is not None and run.resumed_from_step >= 50
            assert not (run_dir / "checkpoints").exists()
            assert predicts_sentiment(run.model_dir) == ["positive", "negative"]
            measure(
                max_steps=max_steps,
                steps_at_cut=int(steps_at_cut),
                stale_steps_total=int(stale.steps_counter()),
                resumed_from_step=run.resumed_from_step,
                stale_stop_reason=stopped["reason"],
            )
        finally:
            stale.stop()
            if newer:
                newer.stop()


async def _superseded(worker: WorkerProcess) -> dict | None:
    events = worker.events("fence.superseded")
    return events[0] if events else None
