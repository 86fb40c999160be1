"""Run one worker process: logging, metrics endpoint, Temporal connection, signals.

Each service's ``worker.py`` supplies a builder; this module owns the process lifecycle so
both workers start, report health and shut down the same way.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from temporalio.client import Client
from temporalio.worker import Worker

from shared import metrics
from shared.health import MetricsServer, WorkerHealth
from shared.logging import configure_logging, get_logger
from shared.settings import Settings
from shared.temporal import build_runtime, connect, free_loopback_port

log = get_logger(__name__)

CONNECT_RETRY_MAX_SECONDS = 30.0
TEMPORAL_CHECK_SECONDS = 10.0


def _package_version() -> str:
    try:
        return version("bert-finetune")
    except PackageNotFoundError:
        return "unknown"


async def _connect_with_retry(settings: Settings, runtime: object, health: WorkerHealth) -> Client:
    delay = 1.0
    while True:
        try:
            return await connect(settings.temporal, runtime)  # type: ignore[arg-type]
        except Exception as err:
            health.set_temporal_ok(False, str(err)[:200])
            log.warning(
                "temporal.connect_failed",
                address=settings.temporal.address,
                error=str(err)[:300],
                retry_in_seconds=delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX_SECONDS)


async def _watch(client: Client, health: WorkerHealth) -> None:
    """Tick liveness every second; check the Temporal connection every few seconds."""
    loop = asyncio.get_running_loop()
    next_check = 0.0
    while True:
        health.tick()
        if loop.time() >= next_check:
            next_check = loop.time() + TEMPORAL_CHECK_SECONDS
            try:
                ok = await asyncio.wait_for(client.service_client.check_health(), timeout=5)
                health.set_temporal_ok(bool(ok), "" if ok else "health check failed")
            except Exception as err:
                health.set_temporal_ok(False, str(err)[:200])
        await asyncio.sleep(1.0)


async def run_worker_service(
    service: str,
    settings: Settings,
    metrics_port: int,
    build_worker: Callable[[Client], Worker],
) -> None:
    """Serve ``/metrics``, connect, run the worker until SIGTERM/SIGINT, then drain."""
    configure_logging(settings.log_level, settings.log_format)
    metrics.WORKER_INFO.info({"worker": service, "version": _package_version()})
    sdk_port = free_loopback_port()
    runtime = build_runtime(f"127.0.0.1:{sdk_port}")
    health = WorkerHealth()
    server = MetricsServer(
        settings.metrics_bind_address,
        metrics_port,
        health,
        sdk_metrics_url=f"http://127.0.0.1:{sdk_port}/metrics",
    ).start()
    log.info(
        "worker.starting",
        service=service,
        temporal=repr(settings.temporal),
        metrics_port=server.port,
        runs_dir=str(settings.runs_dir),
    )
    watcher: asyncio.Task[None] | None = None
    try:
        client = await _connect_with_retry(settings, runtime, health)
        health.set_temporal_ok(True)
        worker = build_worker(client)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        watcher = asyncio.create_task(_watch(client, health))
        run_task = asyncio.create_task(worker.run())
        health.set_worker_running(True)
        log.info("worker.started", service=service, task_queue=worker.task_queue)
        stop_task = asyncio.create_task(stopping.wait())
        await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        health.set_worker_running(False)
        if stopping.is_set():
            log.info("worker.stopping", grace_seconds=settings.graceful_shutdown_seconds)
            await worker.shutdown()
        stop_task.cancel()
        await run_task
    finally:
        if watcher:
            watcher.cancel()
        server.close()
        log.info("worker.stopped", service=service)
