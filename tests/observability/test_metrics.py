"""Worker endpoints: naming rules for every metric, the SDK's metrics, health probes."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from shared.tasks import TASKS
from tests.helpers.prometheus import prometheus_get
from tests.observability.conftest import ObservedStack, http_get

ROLES = ("trainer", "inferencer")
# ``route`` and ``code``: the inferencer's HTTP requests (shared.metrics.HTTP_ROUTES, a status).
# ``task`` and ``reason``: the shadow rollout metrics (a fixed set of tasks; busy or failed).
ALLOWED_LABELS = {
    *("error_type", "outcome", "worker", "version", "tracker", "route", "code"),
    *("task", "reason"),
}
_NAME = re.compile(r"^bert_[a-z][a-z0-9_]*[a-z0-9]$")
_EXCEPTION_CLASS = re.compile(r"^[A-Z][A-Za-z0-9]*$")
# Units other than the base ones (seconds, bytes, ratios) have no place in our names.
_NON_BASE_UNITS = ("_ms", "_milliseconds", "_minutes", "_hours", "_percent", "_kb", "_mb")
MAX_SERIES_PER_METRIC = 30


def scrape(stack: ObservedStack, role: str) -> str:
    status, body = http_get(f"{getattr(stack, role).base_url}/metrics")
    assert status == 200
    return body.decode()


def declared_types(text: str) -> dict[str, str]:
    return dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))


@pytest.mark.parametrize("role", ROLES)
def test_our_metrics_follow_the_naming_rules(observed: ObservedStack, role: str) -> None:
    text = scrape(observed, role)
    types = declared_types(text)
    ours = {name: kind for name, kind in types.items() if name.startswith("bert_")}
    # Each role serves only its own families (shared/service.py).
    assert len(ours) >= {"trainer": 15, "inferencer": 9}[role], sorted(ours)
    for name, kind in ours.items():
        assert _NAME.match(name), name
        assert not any(unit in name for unit in _NON_BASE_UNITS), f"{name}: not a base unit"
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{kind} {name} must not end in _total"
        if kind == "histogram" and any(w in name for w in ("duration", "latency", "time")):
            assert name.endswith("_seconds"), name
    assert not [line for line in text.splitlines() if "_created" in line]

    for family in text_string_to_metric_families(text):
        if not family.name.startswith("bert_"):
            continue
        label_sets = {
            frozenset((k, v) for k, v in sample.labels.items() if k != "le")
            for sample in family.samples
        }
        assert len(label_sets) <= MAX_SERIES_PER_METRIC, family.name
        for labels in label_sets:
            for key, value in labels:
                assert key in ALLOWED_LABELS, f"{family.name}: label {key!r} is not allowed"
                if key == "error_type":
                    assert value in metrics.TRAINING_ERROR_TYPES or _EXCEPTION_CLASS.match(value)
                if key == "outcome":
                    assert value in (
                        *metrics.RUN_OUTCOMES,
                        *metrics.EXPORT_OUTCOMES,
                        *metrics.INFERENCE_OUTCOMES,
                    ) or _EXCEPTION_CLASS.match(value), f"{family.name}: outcome {value!r}"
                if key == "worker":
                    assert value == role
                if key == "tracker":
                    assert value in metrics.TRACKERS, f"{family.name}: tracker {value!r}"
                if key == "route":
                    assert value in metrics.HTTP_ROUTES, f"{family.name}: route {value!r}"
                if key == "code":
                    assert re.fullmatch(r"[1-5][0-9][0-9]", value), f"{family.name}: code {value!r}"
                if key == "task":
                    assert value in TASKS, f"{family.name}: task {value!r}"
                if key == "reason":
                    assert value in metrics.SHADOW_SKIP_REASONS, f"{family.name}: reason {value!r}"


@pytest.mark.parametrize("role", ROLES)
def test_sdk_and_process_metrics_are_served_beside_ours(observed: ObservedStack, role: str) -> None:
    text = scrape(observed, role)
    types = declared_types(text)
    # The Temporal SDK's names are unchanged (the official Core SDK dashboard relies on them).
    assert types.get("temporal_activity_execution_latency") == "histogram"
    assert types.get("temporal_activity_schedule_to_start_latency") == "histogram"
    assert "temporal_worker_task_slots_available" in types
    # No `_total` added to the SDK's counters (`local_activity_total` is the SDK's own name).
    suffixed = {n for n in types if n.startswith("temporal_") and n.endswith("_total")}
    assert suffixed <= {"temporal_local_activity_total"}
    # Training activities run for hours: the execution latency buckets reach 8 h (in ms).
    assert "temporal_activity_execution_latency_bucket{" in text
    assert 'le="2.88e+07"' in text or 'le="28800000"' in text
    for standard in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert standard in types, standard
    assert 'bert_worker_info{version="' in text or f'worker="{role}"' in text


def test_no_run_or_workflow_ids_reach_prometheus(observed: ObservedStack) -> None:
    """Every label Prometheus stored for our metrics is one of the few allowed."""
    selector = {"match[]": '{__name__=~"bert_.+"}', "start": observed.started_at}
    names = set(prometheus_get(observed.prometheus_url, "/api/v1/labels", selector))
    target_labels = {"__name__", "job", "instance", "namespace", "pod", "le"}
    assert names - target_labels <= ALLOWED_LABELS, names
    series = prometheus_get(observed.prometheus_url, "/api/v1/series", selector)
    values = {value for labels in series for value in labels.values()}
    assert observed.run_id not in values and observed.failed_run_id not in values
    per_metric: dict[str, int] = {}
    for labels in series:
        if "le" not in labels:
            per_metric[labels["__name__"]] = per_metric.get(labels["__name__"], 0) + 1
    # Two workers scraped: each metric has at most twice one worker's bound.
    assert max(per_metric.values()) <= 2 * MAX_SERIES_PER_METRIC, per_metric


@pytest.mark.parametrize("role", ROLES)
def test_health_endpoints_answer_on_running_workers(observed: ObservedStack, role: str) -> None:
    worker = getattr(observed, role)
    worker.assert_running()
    for path in ("/healthz", "/readyz"):
        status, body = http_get(f"{worker.base_url}{path}")
        assert (status, body.strip()) == (200, b"ok"), path
    assert http_get(f"{worker.base_url}/nope")[0] == 404
    assert observed.scalar(f'up{{job="{role}"}}') == 1
