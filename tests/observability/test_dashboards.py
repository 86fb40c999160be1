"""Every PromQL expression of every shipped dashboard returns data from a real Prometheus."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from bench.plot_panel import (
    finite_points,
    iter_panels,
    load_dashboard,
    panel_queries,
    plot_panel,
    prometheus_get,
    query_range,
    substitute,
)
from tests.observability.conftest import NAMESPACE, ObservedStack

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "charts" / "bert-finetune" / "dashboards"
DASHBOARDS = {"bert-training.json": "trainer", "bert-inference.json": "inferencer"}
# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval).
RATE_INTERVAL = "10s"
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
    for name_ in ("namespace", "job", "instance"):
        assert variables[name_]["type"] == "query"
        assert variables[name_]["datasource"]["uid"] == "${datasource}"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            for variable in ("$namespace", "$job", "$instance"):
                assert variable in target["expr"], f"{panel['title']}: {variable} unused"


def resolve_variables(stack: ObservedStack, model: dict, range_seconds: int) -> dict[str, str]:
    """Run each query variable the way Grafana does (the series label-values API), in order."""
    values: dict[str, str] = {}
    for variable in model["templating"]["list"]:
        if variable["type"] != "query":
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
    assert values == {"namespace": NAMESPACE, "job": role, "instance": worker.target}


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
