"""Paths and helpers shared by the deploy tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "bert-finetune"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "bert"
NAMESPACE = "ml"

Render = Callable[..., list[dict[str, Any]]]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def documents(rendered: dict[str, str], *, include_tests: bool = True) -> list[dict[str, Any]]:
    """Every Kubernetes object Helm rendered (NOTES.txt and empty documents left out)."""
    objects = []
    for template, text in rendered.items():
        if template.endswith("NOTES.txt"):
            continue
        if not include_tests and "/templates/tests/" in template:
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> list[dict]:
    return [
        o
        for o in objects
        if o["kind"] == kind
        and (
            component is None
            or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        )
    ]


def only(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict:
    found = find(objects, kind, component)
    if kind == "ConfigMap":  # the Grafana dashboards ship as ConfigMaps of their own
        found = [o for o in found if "grafana_dashboard" not in o["metadata"].get("labels", {})]
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {len(found)}"
    return found[0]
