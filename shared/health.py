"""One HTTP endpoint per worker: ``/metrics``, ``/healthz`` (liveness), ``/readyz`` (readiness).

``/metrics`` serves the project's metrics and the default collectors, followed by the
Temporal SDK's metrics, fetched from the SDK's exporter on a private loopback port so
Prometheus scrapes one target per worker. The SDK labels its series with the Temporal
namespace as ``namespace``, the label Kubernetes service discovery uses for the pod's
namespace: scrape configs with ``honor_labels: true`` (the usual annotation-based ones) would
let it overwrite the Kubernetes one, and the others rename it ``exported_namespace``. It is
served as ``temporal_namespace`` instead, so neither happens.
"""

from __future__ import annotations

import errno
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from shared.logging import get_logger
from shared.settings import SettingsError

log = get_logger(__name__)

# The event loop must tick at least this often for the worker to count as alive. It ticks
# from process start, whether or not Temporal is reachable (shared.service).
LIVENESS_STALE_SECONDS = 60.0

_fatal_lock = threading.Lock()
_fatal_reason: str | None = None


def report_fatal(reason: str) -> None:
    """Mark this process as needing a restart (liveness fails), e.g. a hung training step.

    A thread stuck in native code cannot be stopped from Python; failing the liveness
    probe lets the kubelet restart the container and free the device.
    """
    global _fatal_reason
    with _fatal_lock:
        _fatal_reason = _fatal_reason or reason


def fatal_reason() -> str | None:
    with _fatal_lock:
        return _fatal_reason


class WorkerHealth:
    """State the probes read; updated by the worker's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop_tick = time.monotonic()
        self._worker_running = False
        self._temporal_ok = False
        self._blocked: str | None = None
        self.reason = "starting"

    def tick(self) -> None:
        with self._lock:
            self._loop_tick = time.monotonic()

    def set_worker_running(self, running: bool) -> None:
        with self._lock:
            self._worker_running = running

    def set_temporal_ok(self, ok: bool, reason: str = "") -> None:
        """``reason`` is what ``/readyz`` shows while not ok; it must say what is wrong."""
        with self._lock:
            self._temporal_ok = ok
            self.reason = reason

    def block(self, reason: str) -> None:
        """Not ready for good, with ``reason`` (one line: what is wrong and the fix), while
        staying alive: a restart would not fix it (e.g. GPUs the pod asked for and cannot use)."""
        with self._lock:
            self._blocked = reason

    def alive(self) -> tuple[bool, str]:
        if (reason := fatal_reason()) is not None:
            return False, reason
        with self._lock:
            age = time.monotonic() - self._loop_tick
        if age > LIVENESS_STALE_SECONDS:
            return False, f"event loop has not ticked for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        alive, why = self.alive()
        with self._lock:
            if not alive:
                return False, why
            if self._blocked is not None:
                return False, self._blocked
            if not self._temporal_ok:
                return False, self.reason
            if not self._worker_running:
                return False, "worker is not polling"
        return True, "ok"


class MetricsPortInUse(SettingsError):
    """The metrics port (``METRICS_PORT``) is taken by another process."""


class _FamiliesWithout:
    """The default registry's metric families minus those starting with given prefixes."""

    def __init__(self, excluded_prefixes: tuple[str, ...]) -> None:
        self._excluded = excluded_prefixes

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if not family.name.startswith(self._excluded):
                yield family


class _LoggingHTTPServer(ThreadingHTTPServer):
    """Reports a request that failed (a scraper that hung up mid-answer on a loaded node) as
    one structured log event, not ``socketserver``'s dashed traceback on stderr: every line a
    worker writes stays JSON in containers."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        log.warning("metrics_http.request_failed", client=str(client_address), error=repr(error))


class MetricsServer:
    """A small threaded HTTP server; stopped with ``close()``.

    ``excluded_prefixes`` drops metric families that belong to another worker role.
    """

    def __init__(
        self,
        bind_address: str,
        port: int,
        health: WorkerHealth,
        sdk_metrics_url: str | None,
        excluded_prefixes: tuple[str, ...] = (),
    ) -> None:
        handler = _make_handler(health, sdk_metrics_url, _FamiliesWithout(excluded_prefixes))
        try:
            self._server = _LoggingHTTPServer((bind_address, port), handler)
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise MetricsPortInUse(
                f"METRICS_PORT={port} is already in use on {bind_address} (another worker or "
                "`bert-finetune dev` on this machine?); set METRICS_PORT to a free port, "
                "or 0 for any free port"
            ) from None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# The SDK's ``namespace`` label: first in a sample's label set, or after a comma. Label
# values it writes (task queues, workflow and activity type names) hold no quotes.
_SDK_NAMESPACE_LABEL = re.compile(
    rb'(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*\{(?:[^"{}]*"[^"]*",)*)namespace="'
)


def rename_sdk_namespace_label(exposition: bytes) -> bytes:
    """The SDK's samples with ``namespace="x"`` served as ``temporal_namespace="x"``."""
    return _SDK_NAMESPACE_LABEL.sub(rb'\1temporal_namespace="', exposition)


def _fetch_sdk_metrics(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback only)
            return rename_sdk_namespace_label(response.read())
    except OSError as err:
        log.warning("metrics.sdk_unavailable", error=str(err))
        return b""


def _make_handler(
    health: WorkerHealth, sdk_metrics_url: str | None, families: _FamiliesWithout
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body = generate_latest(families)
                if sdk_metrics_url:
                    body += _fetch_sdk_metrics(sdk_metrics_url)
                self._reply(200, body, CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                ok, why = health.alive()
                self._reply(200 if ok else 503, why.encode() + b"\n")
            elif path == "/readyz":
                ok, why = health.ready()
                self._reply(200 if ok else 503, why.encode() + b"\n")
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # probes every few seconds would drown the logs

    return Handler
