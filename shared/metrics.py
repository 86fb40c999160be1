"""The project's own Prometheus metrics (``bert_`` prefix, base units, no run ids as labels).

The Temporal SDK's ``temporal_*`` metrics are served beside these on the same ``/metrics``
endpoint (see ``shared.health``). The default registry also carries the standard process
and Python collectors. ``docs/observability.md`` documents every metric; the Grafana
dashboards in ``charts/bert-finetune/dashboards`` query them.

Label values come from small fixed sets. Known values are initialised at import so every
series exists (at 0) from the first scrape: ``rate()`` and ``increase()`` then see the
first failure instead of treating the series' first sample as its starting point.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

from shared.errors import (
    DATASET_ERROR,
    INVALID_CONFIG,
    MODEL_LOAD_ERROR,
    NON_RETRYABLE_TYPES,
    WORKER_SHUTDOWN,
)
from shared.tasks import TASKS

# ``*_created`` gauges double the series count and no dashboard or alert reads them.
disable_created_metrics()

_DURATION_BUCKETS = (
    10,
    30,
    60,
    120,
    300,
    600,
    1200,
    1800,
    3600,
    7200,
    14400,
    28800,
    float("inf"),
)
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    float("inf"),
)
# A warm HTTP request takes milliseconds: finer at the low end than _LATENCY_BUCKETS.
_HTTP_LATENCY_BUCKETS = (
    0.002,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
    float("inf"),
)
_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, float("inf"))

# Outcomes of one training attempt (``bert_training_run_duration_seconds{outcome}``).
RUN_OUTCOMES = ("succeeded", "failed", "interrupted", "cancelled", "superseded")
# A SIGTERM'd worker seals a checkpoint and fails the attempt with this retryable type.
TRAINING_ERROR_TYPES = (INVALID_CONFIG, DATASET_ERROR, MODEL_LOAD_ERROR, WORKER_SHUTDOWN)
# How an ONNX export attempt ends, besides an error type (``BertExportOutput.outcome``).
EXPORT_OUTCOMES = ("exported", "already_exported", "superseded", "abandoned", "cancelled")
INFERENCE_SUCCESS = "success"
INFERENCE_OUTCOMES = (INFERENCE_SUCCESS, *NON_RETRYABLE_TYPES)

# The label is ``worker``, not ``service``: Prometheus Operator sets a ``service`` target
# label, which would rename ours to ``exported_service``.
WORKER_INFO = Info("bert_worker", "The worker's role (trainer or inferencer) and version")

# Training
RUNS_STARTED = Counter("bert_training_runs_started", "Training attempts started")
RUNS_SUCCEEDED = Counter("bert_training_runs_succeeded", "Training runs that finished")
RUNS_FAILED = Counter(
    "bert_training_runs_failed", "Training attempts that failed, by error type", ["error_type"]
)
RUNS_CANCELLED = Counter("bert_training_runs_cancelled", "Training runs cancelled by a user")
RUNS_RESUMED = Counter(
    "bert_training_runs_resumed", "Training attempts that resumed from a checkpoint"
)
RUNS_IN_FLIGHT = Gauge("bert_training_runs_in_flight", "Training runs executing on this worker")
EXPORTS_IN_FLIGHT = Gauge(
    "bert_training_exports_in_flight", "ONNX exports (BertExportWorkflow) executing on this worker"
)
EXPORTS = Counter(
    "bert_training_exports",
    "ONNX exports by outcome (exported, already_exported, superseded, abandoned, or the error)",
    ["outcome"],
)
EXPORT_DURATION = Histogram(
    "bert_training_export_duration_seconds",
    "Wall time of one ONNX export attempt, by outcome",
    ["outcome"],
    buckets=_DURATION_BUCKETS,
)
RUN_DURATION = Histogram(
    "bert_training_run_duration_seconds",
    "Wall time of one training attempt, by outcome",
    ["outcome"],
    buckets=_DURATION_BUCKETS,
)
STEPS = Counter("bert_training_steps", "Optimizer steps taken")
SAMPLES = Counter(
    "bert_training_samples",
    "Training samples processed (optimizer steps times the effective batch size)",
)
SAMPLES_PER_SECOND = Gauge(
    "bert_training_samples_per_second",
    "Training throughput of the latest finished run, as measured by the Trainer",
)
TRAINING_LOSS = Gauge("bert_training_loss", "Latest logged training loss on this worker")
EVAL_ACCURACY = Gauge(
    "bert_training_eval_accuracy", "Eval accuracy of the latest run evaluated on this worker"
)
CHECKPOINTS = Counter("bert_training_checkpoints", "Verified checkpoints written")
TRAINING_STALLS = Counter(
    "bert_training_stalls",
    "Training attempts abandoned because a step did not finish within the stall timeout",
)
HEARTBEATS = Counter("bert_training_heartbeats", "Activity heartbeats sent")
LAST_HEARTBEAT = Gauge(
    "bert_training_last_heartbeat_timestamp_seconds", "Unix time of the latest heartbeat sent"
)

# Experiment tracking (MLflow, TensorBoard): best effort, so failures are counted, not raised.
TRACKERS = ("mlflow", "tensorboard")
TRACKING_ERRORS = Counter(
    "bert_tracking_errors",
    "Experiment-tracking operations that failed (training went on), by tracker",
    ["tracker"],
)
TRACKING_RECORDS_DROPPED = Counter(
    "bert_tracking_records_dropped",
    "Metric points given up on (tracker unreachable too long or queue full), by tracker",
    ["tracker"],
)

# Inference
INFERENCE_REQUESTS = Counter(
    "bert_inference_requests", "Inference requests by outcome", ["outcome"]
)
INFERENCE_LATENCY = Histogram(
    "bert_inference_request_duration_seconds",
    "Time to answer one inference request, model loading included",
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_TEXTS = Counter("bert_inference_texts", "Texts classified")
INFERENCE_BATCH_SIZE = Histogram(
    "bert_inference_batch_size", "Texts per forward pass", buckets=_BATCH_BUCKETS
)
MODEL_CACHE_HITS = Counter(
    "bert_inference_model_cache_hits", "Inference requests served by an already loaded model"
)
MODEL_CACHE_MISSES = Counter(
    "bert_inference_model_cache_misses", "Inference requests that had to load their model"
)
MODEL_LOADS = Counter("bert_inference_model_loads", "Models loaded from the runs directory")
MODEL_LOAD_DURATION = Histogram(
    "bert_inference_model_load_duration_seconds",
    "Time to load a model and its tokenizer",
    buckets=_LOAD_BUCKETS,
)
MODELS_CACHED = Gauge("bert_inference_models_cached", "Models held in the inferencer's cache")

# The inferencer's HTTP endpoint (Open Inference Protocol v2, services/inferencer/http_server.py).
# ``code`` is the HTTP status; ``route`` one of HTTP_ROUTES.
HTTP_ROUTES = ("infer", "metadata", "ready", "health")
HTTP_CODES = ("200", "400", "404", "413", "500", "503")
HTTP_REQUESTS = Counter(
    "bert_inference_http_requests",
    "HTTP requests answered by the inferencer, by route and status code",
    ["route", "code"],
)
HTTP_LATENCY = Histogram(
    "bert_inference_http_request_duration_seconds",
    "Time to answer one HTTP infer request (body read to response built)",
    buckets=_HTTP_LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "bert_inference_http_in_flight_requests",
    "HTTP infer requests admitted and not yet answered (queued for a batch or classified)",
)
HTTP_BATCH_TEXTS = Histogram(
    "bert_inference_http_batch_texts",
    "Texts per dynamic batch: the infer requests for one model classified together",
    buckets=_BATCH_BUCKETS,
)
HTTP_BATCH_REQUESTS = Histogram(
    "bert_inference_http_batch_requests",
    "Infer requests per dynamic batch",
    buckets=_BATCH_BUCKETS,
)

# Shadow rollouts (docs/inference.md, "Rollouts"): the shadow run's predictions next to those
# of the run that answered. Units per task: texts (same label; same label set; a score within
# the tolerance) and, for token classification, words (same tag).
SHADOW_SKIP_REASONS = ("busy", "failed")
SHADOW_COMPARED = Counter(
    "bert_inference_shadow_compared",
    "Predictions an alias's shadow run made next to the run that answered, by task "
    "(texts; words for token classification)",
    ["task"],
)
SHADOW_AGREED = Counter(
    "bert_inference_shadow_agreed",
    "Shadow predictions that agreed with the answer, by task: same label, same label set, "
    "a regression score within tolerance, same word tag",
    ["task"],
)
SHADOW_SKIPPED = Counter(
    "bert_inference_shadow_skipped",
    "Requests the shadow run did not score, by reason (busy: its queue was full; failed: it "
    "could not be loaded or classify)",
    ["reason"],
)

# No value until a run reports one: NaN leaves a gap in a panel where 0 would read as a
# perfect loss or a failed accuracy.
for _gauge in (TRAINING_LOSS, EVAL_ACCURACY, SAMPLES_PER_SECOND):
    _gauge.set(float("nan"))
for _error_type in TRAINING_ERROR_TYPES:
    RUNS_FAILED.labels(error_type=_error_type)
for _outcome in RUN_OUTCOMES:
    RUN_DURATION.labels(outcome=_outcome)
for _outcome in EXPORT_OUTCOMES:
    EXPORTS.labels(outcome=_outcome)
for _outcome in INFERENCE_OUTCOMES:
    INFERENCE_REQUESTS.labels(outcome=_outcome)
for _code in HTTP_CODES:
    HTTP_REQUESTS.labels(route="infer", code=_code)
for _task in TASKS:
    SHADOW_COMPARED.labels(task=_task)
    SHADOW_AGREED.labels(task=_task)
for _reason in SHADOW_SKIP_REASONS:
    SHADOW_SKIPPED.labels(reason=_reason)
for _tracker in TRACKERS:
    TRACKING_ERRORS.labels(tracker=_tracker)
    TRACKING_RECORDS_DROPPED.labels(tracker=_tracker)


class HeartbeatClock:
    """Seconds since the last heartbeat, 0 while no run is in flight (so idle is not stale)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None
        self._in_flight = 0

    def beat(self) -> None:
        now = time.time()
        with self._lock:
            self._last = now
        HEARTBEATS.inc()
        LAST_HEARTBEAT.set(now)

    def run_started(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._last = time.time()

    def run_finished(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def seconds_since_last(self) -> float:
        with self._lock:
            if not self._in_flight or self._last is None:
                return 0.0
            return max(0.0, time.time() - self._last)


HEARTBEAT_CLOCK = HeartbeatClock()
SECONDS_SINCE_HEARTBEAT = Gauge(
    "bert_training_seconds_since_last_heartbeat",
    "Seconds since this worker last heartbeated a run in flight (0 when idle)",
)
SECONDS_SINCE_HEARTBEAT.set_function(HEARTBEAT_CLOCK.seconds_since_last)
