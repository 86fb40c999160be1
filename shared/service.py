"""Run one worker process: logging, metrics endpoint, Temporal connection, signals.

Each service's ``worker.py`` supplies a builder; this module owns the process lifecycle so
every worker starts, reports health and shuts down the same way.

Liveness never depends on Temporal: the event loop ticks ``/healthz`` from the first moment,
while the worker retries an unreachable frontend or waits for a missing namespace, so
Kubernetes keeps such a pod running and not-ready (``/readyz`` says why) instead of
restart-looping it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol, TypeVar

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from shared import metrics
from shared.health import MetricsServer, WorkerHealth
from shared.logging import configure_logging, get_logger
from shared.settings import Settings
from shared.storage import open_runs_store
from shared.temporal import build_runtime, connect, free_loopback_port

log = get_logger(__name__)

RETRY_MAX_SECONDS = 30.0
TEMPORAL_CHECK_SECONDS = 10.0
LIVENESS_TICK_SECONDS = 1.0

# Each role serves only its own ``bert_*`` families: the metrics module defines both sets, and
# a trainer exporting idle inference series (or the reverse) would pollute every dashboard
# and alert that does not filter by job. Unknown roles export everything.
FOREIGN_METRIC_PREFIXES: dict[str, tuple[str, ...]] = {
    "trainer": ("bert_inference_",),
    "inferencer": ("bert_training_", "bert_tracking_"),
    "controller": ("bert_training_", "bert_inference_"),
}

T = TypeVar("T")


class Sidecar(Protocol):
    """A server the worker process runs beside its Temporal worker (the inferencer's HTTP
    endpoint). It starts before Temporal is reached (it does not need it), stops taking new
    work at SIGTERM (``draining``) and finishes what it admitted in ``stop``."""

    async def start(self, health: WorkerHealth) -> None: ...

    def draining(self) -> None: ...

    async def stop(self) -> None: ...


def _package_version() -> str:
    try:
        return version("bert-finetune")
    except PackageNotFoundError:
        return "unknown"


class NamespaceMissing(Exception):
    """The Temporal namespace the worker is configured for does not exist on the server."""


def namespace_missing_hint(namespace: str) -> str:
    return (
        f"namespace {namespace!r} does not exist: create it "
        f"(`temporal operator namespace create --namespace {namespace}`, or the chart's "
        "temporal.createNamespace hook) or set TEMPORAL_NAMESPACE; waiting for it"
    )


async def _retry_until_ok(
    attempt: Callable[[], Awaitable[T]],
    health: WorkerHealth,
    what: str,
    event: str,
    **context: object,
) -> T:
    """Run ``attempt`` until it succeeds, backing off; readiness shows each failure."""
    delay = 1.0
    while True:
        try:
            return await attempt()
        except Exception as err:
            error = str(err)[:300]
            health.set_temporal_ok(False, f"{what}: {error}")
            log.warning(event, error=error, retry_in_seconds=delay, **context)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


async def _check_namespace(client: Client, namespace: str) -> None:
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NamespaceMissing(namespace_missing_hint(namespace)) from None
        raise


async def _tick_liveness(health: WorkerHealth) -> None:
    """The event loop is alive as long as this ticks, whatever state Temporal is in."""
    while True:
        health.tick()
        await asyncio.sleep(LIVENESS_TICK_SECONDS)


async def _watch_temporal(client: Client, health: WorkerHealth) -> None:
    """Readiness follows the frontend's health check while the worker polls."""
    while True:
        try:
            ok = await asyncio.wait_for(client.service_client.check_health(), timeout=5)
            health.set_temporal_ok(bool(ok), "" if ok else "Temporal health check failed")
        except Exception as err:
            health.set_temporal_ok(False, f"Temporal health check failed: {str(err)[:200]}")
        await asyncio.sleep(TEMPORAL_CHECK_SECONDS)


async def _unless_stopped(work: Awaitable[T], stopping: asyncio.Event) -> T | None:
    """``work``'s result, or None (``work`` cancelled) when a stop signal arrives first."""
    work_task = asyncio.ensure_future(work)
    stop_task = asyncio.create_task(stopping.wait())
    await asyncio.wait({work_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    if work_task.done():
        return work_task.result()
    work_task.cancel()
    return None


async def _connect_to_namespace(
    settings: Settings, runtime: Runtime, health: WorkerHealth
) -> Client:
    client = await _retry_until_ok(
        lambda: connect(settings.temporal, runtime),
        health,
        f"Temporal unreachable at {settings.temporal.address}",
        "temporal.connect_failed",
        address=settings.temporal.address,
    )
    # The SDK connects to any namespace name and only its worker validation finds out; a
    # missing namespace would end the process, so wait for it here, alive and not ready.
    await _retry_until_ok(
        lambda: _check_namespace(client, settings.temporal.namespace),
        health,
        f"Temporal namespace {settings.temporal.namespace!r} unavailable",
        "temporal.namespace_unavailable",
        namespace=settings.temporal.namespace,
    )
    return client


async def run_worker_service(
    service: str,
    settings: Settings,
    metrics_port: int,
    build_worker: Callable[[Client], Worker],
    sidecars: Sequence[Sidecar] = (),
    precondition: Callable[[], str | None] | None = None,
) -> None:
    """Serve ``/metrics``, connect, run the worker until SIGTERM/SIGINT, then drain.

    ``precondition`` returns why this worker must not poll at all (e.g. a trainer whose
    GPUs torch cannot see would train on the CPU), or None: then it serves its probes,
    alive and not ready with that reason, and never connects, until it is stopped.
    """
    configure_logging(settings.log_level, settings.log_format)
    # A runs store (BERT_RUNS_URI) that ignores conditional writes is refused here, in one
    # line, before the worker polls anything.
    open_runs_store(settings)
    metrics.WORKER_INFO.info({"worker": service, "version": _package_version()})
    sdk_port = free_loopback_port()
    runtime = build_runtime(f"127.0.0.1:{sdk_port}")
    health = WorkerHealth()
    server = MetricsServer(
        settings.metrics_bind_address,
        metrics_port,
        health,
        sdk_metrics_url=f"http://127.0.0.1:{sdk_port}/metrics",
        excluded_prefixes=FOREIGN_METRIC_PREFIXES.get(service, ()),
    ).start()
    log.info(
        "worker.starting",
        service=service,
        temporal=repr(settings.temporal),
        metrics_port=server.port,
        runs_dir=str(settings.runs_dir),
        runs_uri=settings.runs_uri,
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    background = [asyncio.create_task(_tick_liveness(health))]
    # ``sidecars`` (the inferencer's HTTP endpoint) serve from the start: they need no Temporal.
    started: list[Sidecar] = []
    try:
        for sidecar in sidecars:
            await sidecar.start(health)
            started.append(sidecar)
        if precondition is not None and (blocked := precondition()) is not None:
            health.block(blocked)
            log.error("worker.not_ready", service=service, reason=blocked)
            await stopping.wait()
            return
        client = await _unless_stopped(_connect_to_namespace(settings, runtime, health), stopping)
        if client is None:
            return
        health.set_temporal_ok(True)
        worker = build_worker(client)
        background.append(asyncio.create_task(_watch_temporal(client, health)))
        run_task = asyncio.create_task(worker.run())
        health.set_worker_running(True)
        log.info("worker.started", service=service, task_queue=worker.task_queue)
        stop_task = asyncio.create_task(stopping.wait())
        await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        health.set_worker_running(False)
        if stopping.is_set():
            log.info("worker.stopping", grace_seconds=settings.graceful_shutdown_seconds)
            for sidecar in started:
                sidecar.draining()
            await worker.shutdown()
        stop_task.cancel()
        await run_task
    finally:
        for sidecar in reversed(started):
            sidecar.draining()
            await sidecar.stop()
        for task in background:
            task.cancel()
        server.close()
        log.info("worker.stopped", service=service)
