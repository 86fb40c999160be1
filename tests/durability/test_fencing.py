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

from shared.onnx_export import EXPORT_DIR
from shared.runs import RUN_MANIFEST
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.durability.harness import (
    long_config,
    long_run_csv,
    predicts_sentiment,
    task_queue,
    wait_for,
)
from tests.durability.proxy import partition_proxy
from tests.helpers.exports import wait_for_export
from tests.helpers.processes import WorkerProcess

HEARTBEAT_TIMEOUT_SECONDS = 5
# The partitioned trainer's final save hangs until the test lets it go, once the second
# trainer has finished the run (no race with the load); this bounds each wait of the test.
STALLED_SAVE_SECONDS = 150
MAX_STEPS = 1000  # 1000 rows / batch 4 * 4 epochs
SEAM_WORKER = Path(__file__).parents[1] / "seam_worker.py"


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
    """The first trainer is cut off while it saves the final model (the SDK's own local
    timeout cannot stop a save in progress); the second trainer resumes from its last
    checkpoint and completes the run. When the stale save finally returns, the fence must
    refuse it: no model file, no ``run.json`` and no checkpoint of the newer attempt may
    change."""
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path)
    config = long_config(tiny_model, train, validation, checkpoint_steps=50)
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "partition",
            "runs": [config],
            "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS,
        }
    )
    run_dir = runs_root / experiment.run_ids()[0]
    release = tmp_path / "release-the-stale-save"
    with partition_proxy(address) as proxy:
        stale = WorkerProcess(
            proxy.address,
            queue,
            runs_root,
            tmp_path / "partitioned.log",
            extra_env={"FINAL_SAVE_WAITS_FOR": str(release)},
            entry_point=[str(SEAM_WORKER)],
        )
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
                await wait_for(
                    lambda: _event(stale, "training.finished"), "the first trainer to finish", 180
                )
                proxy.cut()  # partitioned while evaluating and saving
                newer = WorkerProcess(address, queue, runs_root, tmp_path / "newer.log")

                output = await asyncio.wait_for(handle.result(), timeout=2 * STALLED_SAVE_SECONDS)
                (run,) = output.runs
                # The commit is followed by its export (BertExportWorkflow), which adds onnx/:
                # the one change a complete run gets. Compare the folder once it has landed.
                export = await wait_for_export(client, run.run_id, timeout=4 * STALLED_SAVE_SECONDS)
                assert export.outcome == "exported", export
                finished_tree = _tree(run_dir)
                assert any(name.startswith(f"{EXPORT_DIR}/") for name in finished_tree)
                # The stale save returns: its attempt ends one way or another.
                release.touch()
                await wait_for(
                    lambda: _event(stale, "model.saved", "fence.superseded", "training.crashed"),
                    "the stale attempt to end",
                    2 * STALLED_SAVE_SECONDS,
                )
                await asyncio.sleep(2)
                # run.json was written once, by the attempt the server accepted...
                assert [v.get("attempt") for v in run_json.versions] == [2]
                # ...and nothing in the run changed once it was complete.
                assert _tree(run_dir) == finished_tree, "the run changed after it completed"

            (refused,) = stale.events("fence.superseded")
            assert not stale.events("model.saved")
            assert newer.events("model.saved")
            assert run.resumed_from_step is not None
            assert not (run_dir / "checkpoints").exists()
            assert not list(run_dir.glob(".final-*")), "the stale staging folder was left"
            assert predicts_sentiment(run.model_dir) == ["positive", "negative"]
            measure(
                max_steps=MAX_STEPS,
                resumed_from_step=run.resumed_from_step,
                stale_refused=refused["reason"],
            )
        finally:
            stale.stop()
            if newer:
                newer.stop()


async def _event(worker: WorkerProcess, *names: str) -> dict | None:
    """The first of these log events the worker has written, if any."""
    events = [event for event in worker.events() if event.get("event") in names]
    return events[0] if events else None
