"""The Temporal server goes away mid-run and comes back: training never stops or restarts.

Its own dev server with SQLite persistence (the session server is in-memory and cannot be
restarted), a real trainer worker process, and a server outage of several seconds.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from temporalio.client import Client

from shared.converter import data_converter
from shared.temporal import free_loopback_port
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput
from tests.durability.harness import (
    long_config,
    long_run_csv,
    task_queue,
    wait_for,
)
from tests.helpers.binaries import temporal_cli
from tests.helpers.processes import WorkerProcess

OUTAGE_SECONDS = 5.0


class DevServer:
    """``temporal server start-dev`` on a fixed port with a SQLite file, restartable."""

    def __init__(self, db_file: Path) -> None:
        self.port = free_loopback_port()
        self.address = f"127.0.0.1:{self.port}"
        self._db_file = db_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                temporal_cli(),
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--http-port",
                str(free_loopback_port()),
                "--metrics-port",
                str(free_loopback_port()),
                "--db-filename",
                str(self._db_file),
                "--log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def stop(self) -> None:
        assert self.process is not None
        self.process.kill()
        while self.process.poll() is None:
            await asyncio.sleep(0.05)


async def _connect(address: str) -> Client | None:
    try:
        return await Client.connect(address, data_converter=data_converter)
    except RuntimeError:
        return None


async def test_training_survives_a_server_restart(
    tiny_model: Path, runs_root: Path, tmp_path: Path, measure: Callable[..., None]
) -> None:
    server = DevServer(tmp_path / "temporal.db")
    server.start()
    worker: WorkerProcess | None = None
    try:
        client = await wait_for(lambda: _connect(server.address), "the dev server", 60, 0.5)
        queue = task_queue()
        train, validation = long_run_csv(tmp_path, rows=2000)
        experiment = BertExperimentInput.model_validate(
            {
                "experiment_name": "restart",
                "runs": [long_config(tiny_model, train, validation, checkpoint_steps=200)],
                # Longer than the outage: the attempt must survive it, not be retried.
                "heartbeat_timeout_seconds": 30,
            }
        )
        worker = WorkerProcess(server.address, queue, runs_root, tmp_path / "worker.log")
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id=f"restart-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )

        async def training() -> float:
            try:
                return worker.steps_counter()
            except OSError:
                return 0.0

        await wait_for(training, "training to start", 120)
        await server.stop()
        down_at = time.monotonic()
        steps_when_down = worker.steps_counter()
        await asyncio.sleep(OUTAGE_SECONDS)
        steps_during_outage = worker.steps_counter() - steps_when_down
        server.start()
        output = await asyncio.wait_for(handle.result(), timeout=180)
        recovered_after = time.monotonic() - down_at

        (run,) = output.runs
        assert steps_during_outage > 0, "training stalled while the server was away"
        assert run.resumed_from_step is None  # the same attempt finished: nothing redone
        assert worker.steps_counter() == 2000
        assert (Path(run.model_dir) / "run.json").is_file()
        measure(
            outage_s=OUTAGE_SECONDS,
            steps_trained_during_outage=int(steps_during_outage),
            steps_lost=0,
            outage_start_to_result_s=recovered_after,
        )
    finally:
        if worker:
            worker.stop()
        await server.stop()
