"""Temporal client and runtime construction, shared by the workers and the CLI."""

from __future__ import annotations

import socket

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from shared.converter import data_converter
from shared.settings import TemporalSettings

# The SDK's default latency buckets stop at 60 s; training activities run for hours.
_LONG_LATENCY_BUCKETS_MS = [
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    1_200_000,
    1_800_000,
    3_600_000,
    7_200_000,
    14_400_000,
    28_800_000,
]


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_runtime(sdk_metrics_address: str) -> Runtime:
    """A runtime exporting SDK metrics (names unchanged: ``temporal_`` prefix, milliseconds)."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=sdk_metrics_address,
                histogram_bucket_overrides={
                    "temporal_activity_execution_latency": _LONG_LATENCY_BUCKETS_MS,
                    "temporal_activity_schedule_to_start_latency": _LONG_LATENCY_BUCKETS_MS,
                },
            )
        )
    )


async def connect(settings: TemporalSettings, runtime: Runtime | None = None) -> Client:
    """Connect with the project's pydantic data converter and the TEMPORAL_* settings."""
    return await Client.connect(
        **settings.connect_config,
        data_converter=data_converter,
        runtime=runtime,
    )
