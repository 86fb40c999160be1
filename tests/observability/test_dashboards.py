"""Every PromQL expression of every shipped dashboard returns data from a real Prometheus."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.observability.conftest import NAMESPACE, ObservedStack, http_get
from tools.plot_panel import (
    finite_points,
    iter_panels,
    load_dashboard,
    panel_queries,
    plot_panel,
    prometheus_get,
    query_range,
    substitute,
)

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "charts" / "bert-finetune" / "dashboards"
DASHBOARDS = {
    "bert-training.json": "trainer",
    "bert-inference.json": "inferencer",
    "bert-controller.json": "controller",
}
# The Temporal tasks each role's workers poll (the dashboard's task_queue variable).
POLLER_TYPES = {
    "trainer": "activity_task",
    "inferencer": "activity_task",
    "controller": "workflow_task",
}
# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval).
RATE_INTERVAL = "10s"
_SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def dashboard(name: str) -> dict:
    return load_dashboard(DASHBOARD_DIR / name)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_valid_grafana_json(name: str) -> None:
    model = dashboard(name)
    assert model["uid"] == name.removesuffix(".json"), "uids are stable: links depend on them"
    assert isinstance(model["schemaVersion"], int) and model["schemaVersion"] >= 36
    assert model["id"] is None, "an exported id would clash on import"
    panels = list(iter_panels(model))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name_ in ("namespace", "job", "instance", "task_queue"):
        assert variables[name_]["type"] == "query"
        assert variables[name_]["datasource"]["uid"] == "${datasource}"
    # "All" workers must be this role's workers, never ".*" (roles may share a job).
    assert f'worker="{DASHBOARDS[name]}"' in variables["instance"]["definition"]
    assert "allValue" not in variables["instance"]
    poller_type = POLLER_TYPES[DASHBOARDS[name]]
    assert f'poller_type="{poller_type}"' in variables["task_queue"]["definition"]
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            for metric, matchers in _SELECTOR.findall(target["expr"]):
                # Per-worker series filter by worker; workflow series by the task queue
                # (any worker of the queue, the controller included, may complete a workflow).
                needed = ["$namespace"]
                needed += ["$task_queue"] if metric.startswith("temporal_") else []
                needed += [] if metric.startswith("temporal_workflow_") else ["$job", "$instance"]
                for variable in needed:
                    assert variable in matchers, f"{panel['title']}: {metric} ignores {variable}"


def resolve_variables(
    stack: ObservedStack, model: dict, range_seconds: int, chosen: dict[str, str] | None = None
) -> dict[str, str]:
    """Run each query variable the way Grafana does (the series label-values API), in order;
    ``chosen`` variables take the given value instead, as a user's selection would."""
    values: dict[str, str] = dict(chosen or {})
    for variable in model["templating"]["list"]:
        if variable["type"] != "query" or variable["name"] in values:
            continue
        match = _LABEL_VALUES.match(variable["definition"])
        assert match, f"unsupported variable query {variable['definition']!r}"
        params = {"start": stack.started_at, "end": stack.finished_at}
        if match["selector"]:
            params["match[]"] = substitute(
                match["selector"], values, range_seconds=range_seconds, rate_interval=RATE_INTERVAL
            )
        found = prometheus_get(
            stack.prometheus_url, f"/api/v1/label/{match['label']}/values", params
        )
        assert len(found) == 1, f"${variable['name']}: expected one value, got {found}"
        values[variable["name"]] = found[0]
    return values


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variables_select_the_right_workers(observed: ObservedStack, name: str) -> None:
    model = dashboard(name)
    role = DASHBOARDS[name]
    values = resolve_variables(observed, model, int(observed.finished_at - observed.started_at))
    worker = getattr(observed, role)
    queue = {
        "trainer": observed.training_queue,
        "inferencer": observed.inference_queue,
        "controller": observed.control_queue,
    }[role]
    assert values == {
        "namespace": NAMESPACE,
        "job": role,
        "instance": worker.target,
        "task_queue": queue,
    }


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_returns_data(observed: ObservedStack, name: str) -> None:
    model = dashboard(name)
    range_seconds = int(observed.finished_at - observed.started_at) + 1
    values = resolve_variables(observed, model, range_seconds)
    queries = panel_queries(model)
    assert len(queries) >= 10
    empty = []
    for query in queries:
        expr = substitute(
            query.expr, values, range_seconds=range_seconds, rate_interval=RATE_INTERVAL
        )
        series = query_range(
            observed.prometheus_url, expr, observed.started_at, observed.finished_at, 1
        )
        if not any(finite_points(s) for s in series):
            empty.append(f"[{query.panel_title} / {query.ref_id}] {expr}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)


def test_training_panel_renders_to_png(observed: ObservedStack, tmp_path: Path) -> None:
    """The picture in docs/observability.md; BERT_PANEL_PNG=path writes a copy there."""
    model = dashboard("bert-training.json")
    values = resolve_variables(observed, model, int(observed.finished_at - observed.started_at))
    out = tmp_path / "training-panel.png"
    points = plot_panel(
        observed.prometheus_url,
        model,
        "Loss and eval accuracy",
        values,
        observed.started_at,
        observed.finished_at,
        out,
        rate_interval=RATE_INTERVAL,
    )
    assert points >= 10
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    if target := os.environ.get("BERT_PANEL_PNG"):
        shutil.copyfile(out, target)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_each_panel_shows_only_its_own_workers_series(observed: ObservedStack, name: str) -> None:
    """With annotation-based scraping both roles share one job: "All" jobs here. Every series
    any panel selects must still come from this dashboard's worker only."""
    model = dashboard(name)
    role = DASHBOARDS[name]
    range_seconds = int(observed.finished_at - observed.started_at) + 1
    values = resolve_variables(observed, model, range_seconds, chosen={"job": ".*"})
    assert values["instance"] == getattr(observed, role).target
    checked = 0
    for query in panel_queries(model):
        for metric, matchers in _SELECTOR.findall(query.expr):
            selector = substitute(
                f"{metric}{{{matchers}}}",
                values,
                range_seconds=range_seconds,
                rate_interval=RATE_INTERVAL,
            )
            series = prometheus_get(
                observed.prometheus_url,
                "/api/v1/series",
                {"match[]": selector, "start": observed.started_at, "end": observed.finished_at},
            )
            instances = {s["instance"] for s in series}
            assert instances == {getattr(observed, role).target}, (
                f"[{query.panel_title}] {selector} selects {sorted(instances)}"
            )
            checked += 1
    assert checked >= 20


# Each role's own family prefix (None: the controller has none) and the ones it never serves.
FAMILIES = {
    "trainer": ("bert_training_", ("bert_inference_",)),
    "inferencer": ("bert_inference_", ("bert_training_", "bert_tracking_")),
    "controller": (None, ("bert_training_", "bert_inference_")),
}


@pytest.mark.parametrize("role", sorted(DASHBOARDS.values()))
def test_each_worker_exports_only_its_own_families(observed: ObservedStack, role: str) -> None:
    status, body = http_get(f"{getattr(observed, role).base_url}/metrics")
    assert status == 200
    families = {
        line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")
    }
    own, foreign = FAMILIES[role]
    if own:
        assert any(f.startswith(own) for f in families)
    assert not [f for f in families if f.startswith(foreign)]
    assert "bert_worker_info" in families
    # Every worker runs workflow tasks of its queue (the controller nothing else).
    assert any(f.startswith("temporal_workflow_task_") for f in families)
