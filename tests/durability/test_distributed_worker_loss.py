"""A worker training one run over two processes (torchrun, DDP on gloo) is lost mid-run.

Real worker processes with ``BERT_TRAINER_PROCESSES=2``, a real Temporal server, real ranks.
The ranks must die with their worker (nothing keeps writing into the run folder), and the
retry resumes from the checkpoint the leader sealed, as with one process.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import CancelledError

from services.trainer.worker import build_trainer_worker
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.conftest import TEST_LOCAL_PATH_ROOTS
from tests.durability.harness import (
    long_config,
    long_run_csv,
    predicts_sentiment,
    query_progress,
    sealed_checkpoint,
    task_queue,
    wait_for,
)
from tests.helpers.processes import WorkerProcess

pytestmark = pytest.mark.slow  # worker processes, torchrun and a thousand steps each

MAX_STEPS = 1000  # 1000 rows / batch 4 * 4 epochs, whatever the number of processes
TWO_PROCESSES = {"BERT_TRAINER_PROCESSES": "2"}


def _experiment(name: str, config: dict) -> BertExperimentInput:
    return BertExperimentInput.model_validate(
        {"experiment_name": name, "runs": [config], "heartbeat_timeout_seconds": 5}
    )


def _rank_pids(worker: WorkerProcess) -> list[int]:
    """The ranks the worker launched, from the pid files in its launch folder."""
    (launch,) = worker.events("training.launching")
    return [int(p.read_text()) for p in sorted(Path(launch["folder"]).glob("rank-*.pid"))]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and b"services.trainer.distributed.rank_main" in cmdline


async def test_sigkill_takes_the_ranks_down_and_the_retry_resumes(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path)
    config = long_config(tiny_model, train, validation, checkpoint_steps=50)
    first = WorkerProcess(address, queue, runs_root, tmp_path / "w1.log", extra_env=TWO_PROCESSES)
    second: WorkerProcess | None = None
    try:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            _experiment("ddp-kill9", config),
            id=f"ddp-kill9-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )
        checkpoint = await wait_for(lambda: sealed_checkpoint(handle), "a sealed checkpoint", 180)
        ranks = _rank_pids(first)
        assert len(ranks) == 2 and all(_running(pid) for pid in ranks)

        first.signal(signal.SIGKILL)
        assert await first.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in ranks) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not any(_running(pid) for pid in ranks), "ranks outlived their worker"
        # A killed worker cleans nothing up: its launch folder stays until a later launch
        # finds it stale. Not this test's business; tidy /tmp.
        shutil.rmtree(Path(first.events("training.launching")[0]["folder"]))

        second = WorkerProcess(
            address, queue, runs_root, tmp_path / "w2.log", extra_env=TWO_PROCESSES
        )
        output = await asyncio.wait_for(handle.result(), timeout=240)
        (run,) = output.runs
        assert run.resumed_from_step is not None
        assert run.resumed_from_step >= int(Path(checkpoint).name.split("-")[1])
        # The new worker's ranks trained the remaining steps, not the whole run again.
        assert second.steps_counter() == MAX_STEPS - run.resumed_from_step
        assert (Path(run.model_dir) / "run.json").is_file()
        assert not (Path(run.model_dir) / "checkpoints").exists()
        assert predicts_sentiment(run.model_dir) == ["positive", "negative"]
    finally:
        first.stop()
        if second:
            second.stop()


async def test_sigterm_has_every_rank_stop_at_one_sealed_checkpoint(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path
) -> None:
    address = client.service_client.config.target_host
    queue = task_queue()
    train, validation = long_run_csv(tmp_path)
    # No periodic checkpoint: the only one is sealed at shutdown, by all ranks at one step.
    config = long_config(tiny_model, train, validation, checkpoint_steps=MAX_STEPS)
    first = WorkerProcess(
        address, queue, runs_root, tmp_path / "w1.log", grace_s=30, extra_env=TWO_PROCESSES
    )
    second: WorkerProcess | None = None
    try:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            _experiment("ddp-sigterm", config),
            id=f"ddp-sigterm-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )

        async def training() -> float:
            try:
                return first.steps_counter()
            except OSError:  # still starting: no metrics endpoint yet
                return 0.0

        await wait_for(training, "training to start", 180)
        steps_at_sigterm = first.steps_counter()
        first.signal(signal.SIGTERM)
        assert await first.wait(40) == 0
        (sealed,) = first.events("training.checkpoint")
        assert sealed["step"] >= steps_at_sigterm > 0
        assert first.events("training.interrupted")

        second = WorkerProcess(
            address, queue, runs_root, tmp_path / "w2.log", extra_env=TWO_PROCESSES
        )
        output = await asyncio.wait_for(handle.result(), timeout=240)
        (run,) = output.runs
        # Resumed from exactly the checkpoint sealed at shutdown: no work lost.
        assert run.resumed_from_step == sealed["step"]
        assert second.steps_counter() == MAX_STEPS - sealed["step"]
        assert predicts_sentiment(run.model_dir) == ["positive", "negative"]
    finally:
        first.stop()
        if second:
            second.stop()


async def test_cancel_kills_the_ranks_and_discards_the_run(
    client: Client, tiny_model: Path, runs_root: Path, tmp_path: Path
) -> None:
    train, validation = long_run_csv(tmp_path)
    experiment = _experiment("ddp-cancel", long_config(tiny_model, train, validation))
    (run_id,) = experiment.run_ids()
    queue = task_queue()
    worker = build_trainer_worker(
        client,
        task_queue=queue,
        runs_root=runs_root,
        graceful_shutdown=timedelta(seconds=5),
        progress_signal_interval=timedelta(seconds=1),
        processes_per_run=2,
        local_path_roots=TEST_LOCAL_PATH_ROOTS,
    )
    async with worker:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW, experiment, id=f"ddp-cancel-{uuid.uuid4()}", task_queue=queue
        )

        async def training() -> bool:
            (run,) = (await query_progress(handle)).runs
            return run.phase == "training" and run.global_step > 0

        await wait_for(training, "training to start", 180)
        (launch_folder,) = Path(tempfile.gettempdir()).glob(f"bert-ddp-{run_id[:60]}-*")
        ranks = [int(p.read_text()) for p in launch_folder.glob("rank-*.pid")]
        assert len(ranks) == 2 and all(_running(pid) for pid in ranks)

        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=60)
        assert isinstance(failure.value.cause, CancelledError)
        # Ranks gone before the run folder was discarded: nothing can write into it again.
        assert not any(_running(pid) for pid in ranks)
        assert not launch_folder.exists()
        assert not (runs_root / run_id).exists()
