"""Create the configured Temporal namespace when it does not exist (the chart's hook Job).

``python -m shared.namespace --retention-days 3 --timeout-seconds 180`` reads the same
``TEMPORAL_*`` environment as the workers, waits for the frontend, and registers
``TEMPORAL_NAMESPACE`` unless it already exists, so running it twice is harmless. Exit
status 0 means the namespace exists now, or, with ``--best-effort`` (the chart's hook on a
``helm upgrade``), that the attempt was given up with a warning: the workers wait for a
missing namespace themselves, not ready, so an unreachable Temporal must not fail an upgrade.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from shared.logging import configure_logging, get_logger
from shared.settings import Settings
from shared.temporal import connect

log = get_logger(__name__)

RETRY_SECONDS = 5.0


async def namespace_exists(client: Client, namespace: str) -> bool:
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def ensure_namespace(client: Client, namespace: str, retention: timedelta) -> bool:
    """Register ``namespace`` unless it exists; True when this call created it."""
    if await namespace_exists(client, namespace):
        return False
    period = Duration()
    period.FromTimedelta(retention)
    try:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace, workflow_execution_retention_period=period
            )
        )
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:  # another hook run got there first
            return False
        raise
    return True


async def _run(
    settings: Settings, retention: timedelta, timeout_seconds: float, best_effort: bool = False
) -> int:
    namespace = settings.temporal.namespace
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            client = await connect(settings.temporal)
            created = await ensure_namespace(client, namespace, retention)
        except Exception as err:
            if time.monotonic() > deadline:
                if best_effort:
                    log.warning(
                        "temporal.namespace_create_skipped",
                        namespace=namespace,
                        address=settings.temporal.address,
                        error=str(err)[:300],
                        hint="the workers stay not ready until the namespace exists",
                    )
                    return 0
                log.error(
                    "temporal.namespace_create_failed",
                    namespace=namespace,
                    address=settings.temporal.address,
                    error=str(err)[:300],
                )
                return 1
            log.warning(
                "temporal.namespace_create_retry",
                namespace=namespace,
                address=settings.temporal.address,
                error=str(err)[:300],
                retry_in_seconds=RETRY_SECONDS,
            )
            await asyncio.sleep(RETRY_SECONDS)
            continue
        event = "temporal.namespace_created" if created else "temporal.namespace_exists"
        log.info(event, namespace=namespace, retention_days=retention.days)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.namespace", description=__doc__)
    parser.add_argument("--retention-days", type=int, default=3)
    parser.add_argument("--timeout-seconds", type=float, default=180)
    parser.add_argument(
        "--best-effort",
        action="store_true",
        help="exit 0 with a warning when Temporal cannot be reached in time",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    retention = timedelta(days=args.retention_days)
    return asyncio.run(_run(settings, retention, args.timeout_seconds, args.best_effort))


if __name__ == "__main__":
    # A hard exit once the output is flushed: the SDK's native runtime threads can race
    # interpreter finalization and abort a run that already succeeded (as in the CLI).
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
