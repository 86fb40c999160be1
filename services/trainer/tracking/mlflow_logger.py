"""Asynchronous MLflow logging for one training attempt: training never waits for MLflow.

The training thread only puts records on a bounded queue. A daemon thread finds or creates
the MLflow run, then sends the records in batches. While MLflow is unreachable the thread
keeps what it has (bounded), backs off and tries again; every failed request is logged and
counted in ``bert_tracking_errors_total{tracker="mlflow"}``, and nothing is ever raised
into training.

Exactly-once bookkeeping across attempts of the same run:

- The run folder holds a tracking key (written by the callback when training begins); the
  MLflow run carries it as a tag, so every attempt of the run finds the same MLflow run
  (a killed attempt may have created it without telling anyone).
- Each metric series only ever grows: a point whose step is not above the last step MLflow
  already holds for that key is skipped, so the steps a resumed attempt recomputes (after
  its checkpoint, up to where the killed attempt got) are not logged twice.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import metrics
from shared.logging import get_logger

log = get_logger(__name__)

TRACKER = "mlflow"
TAG_PREFIX = "bert_finetune."
TRACKING_KEY_TAG = f"{TAG_PREFIX}tracking_key"
ROLE_TAG = f"{TAG_PREFIX}role"
SWEEP_TAG = f"{TAG_PREFIX}sweep"
PARENT_RUN_TAG = "mlflow.parentRunId"

# MLflow's own limits for one log_batch request.
MAX_METRICS_PER_BATCH = 1000
MAX_TAGS_PER_BATCH = 100
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE_LENGTH = 6000

# MLflow's HTTP client retries a failed request up to 7 times with exponential backoff (more
# than a minute against a closed port). This thread retries on its own schedule instead, so
# each request fails fast and the end of a run is never held up by the client's retries.
# The client also prints run links straight to stdout, which would break the JSON log stream:
# the links are in our own ``tracking.mlflow_run_*`` log events instead.
CLIENT_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


@dataclass(frozen=True)
class RunSpec:
    """Which MLflow run to log to, and what to describe it with when it is created."""

    experiment_name: str
    run_name: str
    tracking_key: str
    tags: dict[str, str]
    # A sweep's trials are child runs of one parent run per sweep.
    sweep_name: str | None = None


@dataclass
class _Pending:
    """What the sender has received but MLflow has not acknowledged yet."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    ready: list[Any] = field(default_factory=list)  # deduplicated mlflow Metric entities
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> JSON content
    status: str | None = None  # the final status, once the attempt has ended

    def __bool__(self) -> bool:
        return bool(
            self.params or self.tags or self.metrics or self.ready or self.artifacts or self.status
        )


_END = object()


class MlflowRunLogger:
    """Queue-backed logger for one attempt; ``end()`` waits at most ``end_timeout`` seconds.

    Args:
        tracking_uri: the MLflow tracking server.
        flush_interval: how long points are gathered before a batch goes out.
        end_timeout: how long ``end()`` waits for the last records; the thread keeps trying
            in the background for ``give_up_after`` seconds more, then counts what it drops.
        max_pending_metrics: points kept while MLflow is unreachable; the oldest go first.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        flush_interval: float = 1.0,
        end_timeout: float = 5.0,
        give_up_after: float = 120.0,
        max_pending_metrics: int = 50_000,
        max_backoff: float = 30.0,
    ) -> None:
        self._uri = tracking_uri
        self._flush_interval = flush_interval
        self._end_timeout = end_timeout
        self._give_up_after = give_up_after
        self._max_pending_metrics = max_pending_metrics
        self._max_backoff = max_backoff
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._spec: RunSpec | None = None
        self._client: Any = None
        self._run_id: str | None = None
        self._last_steps: dict[str, int] = {}
        self._known_params: set[str] = set()
        self._failing = False
        self.run_id_ready = threading.Event()

    @property
    def failing(self) -> bool:
        """True while MLflow is failing this logger (its latest request failed)."""
        return self._failing

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, once the sender has found or created the run."""
        return self._run_id

    # Called from the training thread: never blocks, never raises.

    def start(self, spec: RunSpec, params: dict[str, str]) -> None:
        self._spec = spec
        self._queue.put(("params", params))
        self._thread = threading.Thread(
            target=self._run, name=f"mlflow-{spec.run_name}"[:60], daemon=True
        )
        self._thread.start()

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        now_ms = int(time.time() * 1000)
        self._queue.put(("metrics", [(k, float(v), now_ms, step) for k, v in values.items()]))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._queue.put(("tags", tags))

    def log_json(self, artifact_file: str, content: dict[str, Any]) -> None:
        self._queue.put(("artifact", (artifact_file, content)))

    def end(self, status: str | None) -> None:
        """Send the final status (None leaves the run RUNNING for the next attempt)."""
        if self._thread is None:
            return
        self._queue.put(("status", status))
        self._queue.put(_END)
        # While MLflow is failing, waiting would only delay the end of the activity.
        wait = 0.5 if self._failing else self._end_timeout
        self._thread.join(wait)
        if self._thread.is_alive():
            log.warning("tracking.mlflow_end_pending", waited_s=wait)

    def _run_url(self, experiment_id: str, run_id: str) -> str:
        """Where the run opens in the MLflow UI."""
        return f"{self._uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    # The sender thread.

    def _run(self) -> None:
        pending = _Pending()
        ended_at: float | None = None
        backoff = 1.0
        retry_at = 0.0
        while True:
            if self._collect(pending, timeout=self._flush_interval) and ended_at is None:
                ended_at = time.monotonic()
            if pending and time.monotonic() >= retry_at:
                try:
                    self._send(pending)
                    self._failing = False
                    backoff = 1.0
                except Exception as err:  # unreachable or refused: count it, retry later
                    self._failing = True
                    metrics.TRACKING_ERRORS.labels(tracker=TRACKER).inc()
                    log.warning(
                        "tracking.mlflow_error",
                        error_type=type(err).__name__,
                        error=_first_line(err),
                        retry_in_s=backoff,
                    )
                    retry_at = time.monotonic() + backoff
                    backoff = min(backoff * 2, self._max_backoff)
            if ended_at is None:
                continue
            if not pending:
                return
            if time.monotonic() - ended_at > self._give_up_after:
                dropped = len(pending.metrics) + len(pending.ready)
                metrics.TRACKING_RECORDS_DROPPED.labels(tracker=TRACKER).inc(dropped)
                log.warning("tracking.mlflow_gave_up", metric_points=dropped)
                return
            time.sleep(max(0.0, min(retry_at - time.monotonic(), 1.0)))

    def _collect(self, pending: _Pending, timeout: float) -> bool:
        """Move queued records into ``pending``; True once the end marker arrived."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                return False
            if item is _END:
                return True
            kind, payload = item
            if kind == "params":
                pending.params.update(payload)
            elif kind == "tags":
                pending.tags.update(payload)
            elif kind == "metrics":
                pending.metrics.extend(payload)
                overflow = len(pending.metrics) + len(pending.ready) - self._max_pending_metrics
                if overflow > 0:  # MLflow has been away for long: keep the newest points
                    dropped = min(overflow, len(pending.metrics))
                    del pending.metrics[:dropped]
                    metrics.TRACKING_RECORDS_DROPPED.labels(tracker=TRACKER).inc(dropped)
            elif kind == "artifact":
                pending.artifacts[payload[0]] = payload[1]
            elif kind == "status":
                pending.status = payload or "RUNNING"

    def _send(self, pending: _Pending) -> None:
        """Deliver what is pending; each part leaves ``pending`` once MLflow has taken it."""
        from mlflow.entities import Metric, Param, RunTag

        if self._run_id is None:
            self._resolve_run()
        client, run_id = self._client, self._run_id
        if pending.params:
            known = self._known_params
            params = [
                Param(k, v[:MAX_PARAM_VALUE_LENGTH])
                for k, v in pending.params.items()
                if k not in known  # params are immutable: a resumed run keeps its first values
            ]
            for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
                self._refusable(client.log_batch, run_id, params=chunk)
            pending.params.clear()
        if pending.tags:
            tags = [RunTag(k, v) for k, v in pending.tags.items()]
            for chunk in _chunks(tags, MAX_TAGS_PER_BATCH):
                self._refusable(client.log_batch, run_id, tags=chunk)
            pending.tags.clear()
        for key, value, timestamp, step in pending.metrics:
            if step > self._last_steps.get(key, -1):
                pending.ready.append(Metric(key, value, timestamp, step))
                self._last_steps[key] = step
        pending.metrics.clear()
        while pending.ready:
            batch = pending.ready[:MAX_METRICS_PER_BATCH]
            self._refusable(client.log_batch, run_id, metrics=batch)
            del pending.ready[: len(batch)]
        for path in list(pending.artifacts):
            self._refusable(client.log_dict, run_id, pending.artifacts[path], path)
            del pending.artifacts[path]
        if pending.status is not None:
            if pending.status != "RUNNING":  # RUNNING: interrupted, the next attempt goes on
                client.set_terminated(run_id, status=pending.status)
            pending.status = None

    @staticmethod
    def _refusable(request: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Send ``request``; if MLflow refuses its content, drop it (retrying cannot help)."""
        from mlflow.exceptions import MlflowException

        try:
            request(*args, **kwargs)
        except MlflowException as err:
            if err.get_http_status_code() not in (400, 404, 409, 413, 422):
                raise
            metrics.TRACKING_ERRORS.labels(tracker=TRACKER).inc()
            log.warning(
                "tracking.mlflow_refused", error_code=err.error_code, error=_first_line(err)
            )

    def _resolve_run(self) -> None:
        """Find this run's MLflow run by its tracking key, or create it (with its parent)."""
        for name, value in CLIENT_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient

        spec = self._spec
        assert spec is not None
        client = self._client or MlflowClient(tracking_uri=self._uri)
        self._client = client
        experiment_id = experiment_id_for(client, spec.experiment_name)
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TRACKING_KEY_TAG}` = '{spec.tracking_key}'",
            max_results=1,
        )
        if found:
            run = found[0]
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            self._last_steps = last_logged_steps(client, run)
            self._known_params = set(run.data.params)
            self._run_id = run.info.run_id
            log.info(
                "tracking.mlflow_run_continued",
                mlflow_run_id=run.info.run_id,
                url=self._run_url(experiment_id, run.info.run_id),
                logged_series=len(self._last_steps),
            )
        else:
            tags = {**spec.tags, TRACKING_KEY_TAG: spec.tracking_key}
            if spec.sweep_name:
                tags[PARENT_RUN_TAG] = sweep_parent_run(client, experiment_id, spec.sweep_name)
            run = client.create_run(experiment_id, run_name=spec.run_name, tags=tags)
            self._run_id = run.info.run_id
            log.info(
                "tracking.mlflow_run_created",
                mlflow_run_id=run.info.run_id,
                url=self._run_url(experiment_id, run.info.run_id),
            )
        self.run_id_ready.set()


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0][:300] if text else ""


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def experiment_id_for(client: Any, name: str) -> str:
    """The MLflow experiment named ``name``, created on first use (safe against a race)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # another trainer created it first
        if experiment is None:
            raise
        return experiment.experiment_id


def last_logged_steps(client: Any, run: Any) -> dict[str, int]:
    """The highest step MLflow holds for each metric of ``run``."""
    return {
        key: max(point.step for point in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def _open_sweep_parent(client: Any, experiment_id: str, sweep_name: str) -> str | None:
    """The oldest still-running parent run of the sweep (ties: the smallest run id)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{SWEEP_TAG}` = '{sweep_name}' "
            "and attributes.status = 'RUNNING'"
        ),
    )
    runs = sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))
    return runs[0].info.run_id if runs else None


def sweep_parent_run(
    client: Any, experiment_id: str, sweep_name: str, settle_seconds: float = 1.0
) -> str:
    """The open parent run of a sweep, created by whichever trial gets there first.

    Trials on several trainers may start together and each create a parent. They converge:
    a trial that created one waits ``settle_seconds`` (for other creations in flight to
    land), looks again, and everyone uses the oldest open parent; a trial whose own parent
    lost deletes it.
    """
    existing = _open_sweep_parent(client, experiment_id, sweep_name)
    if existing is not None:
        return existing
    created = client.create_run(
        experiment_id, run_name=sweep_name, tags={ROLE_TAG: "sweep", SWEEP_TAG: sweep_name}
    ).info.run_id
    time.sleep(settle_seconds)
    winner = _open_sweep_parent(client, experiment_id, sweep_name) or created
    if winner != created:
        client.delete_run(created)
        log.info("tracking.mlflow_duplicate_parent_removed", sweep=sweep_name)
    return winner


def mark_run_killed(tracking_uri: str, experiment_name: str, tracking_key: str) -> None:
    """Close a cancelled run's MLflow run as KILLED; errors are logged and counted."""
    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        runs = (
            client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.`{TRACKING_KEY_TAG}` = '{tracking_key}'",
                max_results=1,
            )
            if experiment is not None
            else []
        )
        for run in runs:
            client.set_tag(run.info.run_id, f"{TAG_PREFIX}state", "cancelled")
            client.set_terminated(run.info.run_id, status="KILLED")
    except Exception as err:
        metrics.TRACKING_ERRORS.labels(tracker=TRACKER).inc()
        log.warning("tracking.mlflow_error", error_type=type(err).__name__, error=_first_line(err))


def close_sweep_run(
    tracking_uri: str,
    sweep_name: str,
    status: str,
    summary: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> str | None:
    """End a sweep's open parent run as ``status`` (FINISHED, FAILED or KILLED), with the
    sweep's summary metrics and tags; its MLflow run id, or None when there is none or MLflow
    failed (logged and counted, never raised).

    For the sweep workflow's last step: the trials cannot know when the sweep is over.
    """
    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, RunTag

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(sweep_name)
        run_id = (
            _open_sweep_parent(client, experiment.experiment_id, sweep_name)
            if experiment is not None
            else None
        )
        if run_id is None:
            return None
        now_ms = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now_ms, 0) for k, v in (summary or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )
        client.set_terminated(run_id, status=status)
        return run_id
    except Exception as err:
        metrics.TRACKING_ERRORS.labels(tracker=TRACKER).inc()
        log.warning("tracking.mlflow_error", error_type=type(err).__name__, error=_first_line(err))
        return None
