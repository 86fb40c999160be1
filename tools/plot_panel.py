"""Plot one Grafana dashboard panel from Prometheus's ``query_range`` API (no Grafana needed).

Grafana is not available everywhere the project is built, so this renders what a panel shows
from the same PromQL the dashboard runs, with the dashboard variables substituted the way
Grafana's Prometheus data source does. The observability test uses it to write
``docs/img/training-panel.png``; by hand::

    python -m tools.plot_panel --prometheus http://127.0.0.1:9090 \\
        --dashboard charts/bert-finetune/dashboards/bert-training.json \\
        --panel "Loss and eval accuracy" --minutes 30 --out panel.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Characters Grafana escapes in multi-value / "All"-capable variables used in =~ matchers.
_REGEX_SPECIAL = re.compile(r"([$^*{}\[\]'+?.()|])")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str
    legend: str


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every PromQL expression of every panel."""
    return [
        PanelQuery(
            dashboard=str(dashboard.get("uid")),
            panel_id=int(panel["id"]),
            panel_title=str(panel.get("title", "")),
            ref_id=str(target.get("refId", "")),
            expr=str(target["expr"]),
            legend=str(target.get("legendFormat", "")),
        )
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


ALL = ".*"  # the dashboards' ``allValue``: written into queries unescaped, like Grafana does


def format_variable(values: str | list[str]) -> str:
    """A variable's value as Grafana's Prometheus data source writes it into a query."""
    if isinstance(values, str):
        values = [values]
    if values == [ALL]:
        return ALL
    escaped = [_REGEX_SPECIAL.sub(r"\\\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(
    expr: str,
    variables: Mapping[str, str | list[str]],
    *,
    range_seconds: int,
    rate_interval: str,
    interval: str = "1s",
) -> str:
    """Replace ``$var``, ``${var}``, ``[[var]]`` and Grafana's ``$__`` built-ins in ``expr``."""
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": f"{range_seconds}s",
        "__range_s": str(range_seconds),
    }

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in builtins:
            return builtins[name]
        if name not in variables:
            raise KeyError(f"dashboard variable ${name} has no value")
        return format_variable(variables[name])

    return _VARIABLE.sub(replace, expr)


def prometheus_get(base_url: str, path: str, params: Mapping[str, Any]) -> Any:
    """GET a Prometheus API path; returns ``data`` or raises with Prometheus's error text."""
    query = urllib.parse.urlencode(params, doseq=True)
    request = urllib.request.Request(f"{base_url.rstrip('/')}{path}?{query}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            body = json.load(response)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {dict(params)}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query_range(
    base_url: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    data = prometheus_get(
        base_url, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step}
    )
    return list(data["result"])


def finite_points(series: Mapping[str, Any]) -> list[tuple[float, float]]:
    points = [(float(t), float(v)) for t, v in series.get("values", [])]
    return [(t, v) for t, v in points if math.isfinite(v)]


def legend(template: str, labels: Mapping[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def plot_panel(
    base_url: str,
    dashboard: Mapping[str, Any],
    panel_title: str,
    variables: Mapping[str, str | list[str]],
    start: float,
    end: float,
    out: Path,
    step: float = 1.0,
    rate_interval: str = "15s",
) -> int:
    """Render one panel's series to a PNG; returns the number of points plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel = next((p for p in iter_panels(dashboard) if p.get("title") == panel_title), None)
    if panel is None:
        raise KeyError(f"no panel titled {panel_title!r} in {dashboard.get('title')!r}")
    right_axis = [
        re.compile(o["matcher"]["options"])
        for o in panel.get("fieldConfig", {}).get("overrides", [])
        if o["matcher"].get("id") == "byRegexp"
        and any(p.get("id") == "custom.axisPlacement" for p in o["properties"])
    ]
    figure, left = plt.subplots(figsize=(9, 4.2), dpi=110)
    right = None
    plotted = 0
    plotted_series = 0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for target in panel["targets"]:
        expr = substitute(
            target["expr"], variables, range_seconds=int(end - start), rate_interval=rate_interval
        )
        for series in query_range(base_url, expr, start, end, step):
            points = finite_points(series)
            if not points:
                continue
            name = legend(target.get("legendFormat", ""), series["metric"]) or expr
            axis = left
            if any(pattern.fullmatch(name) for pattern in right_axis):
                right = right or left.twinx()
                axis = right
            xs = [t - start for t, _ in points]
            color = colors[plotted_series % len(colors)]
            axis.plot(xs, [v for _, v in points], ".-", color=color, linewidth=1.5, label=name)
            plotted_series += 1
            plotted += len(points)
    if right is not None and any(
        prop.get("value") == "percentunit"
        for override in panel.get("fieldConfig", {}).get("overrides", [])
        for prop in override["properties"]
    ):
        right.set_ylim(0, 1.05)
    left.set_title(f"{dashboard.get('title')} · {panel_title}")
    left.set_xlabel("seconds since start")
    left.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    if right is not None:
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    left.legend(handles, labels, loc="best", fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return plotted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, required=True)
    parser.add_argument("--panel", required=True, help="panel title")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--var", action="append", default=[], help="name=value (default .*)")
    parser.add_argument("--out", type=Path, default=Path("panel.png"))
    args = parser.parse_args()
    dashboard = load_dashboard(args.dashboard)
    variables: dict[str, str | list[str]] = {
        v["name"]: ALL for v in dashboard.get("templating", {}).get("list", [])
    }
    variables.update(dict(item.split("=", 1) for item in args.var))
    end = time.time()
    start = end - args.minutes * 60
    step = max(1.0, (end - start) / 600)
    points = plot_panel(
        args.prometheus, dashboard, args.panel, variables, start, end, args.out, step=step
    )
    print(f"{args.out}: {points} points")


if __name__ == "__main__":
    main()
