"""Fixtures of the deploy tests: the chart loaded once into the real Helm engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python
import pytest

from tests.deploy.chartlib import CHART_DIR, NAMESPACE, RELEASE, Render, documents


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart) -> Render:
    def _render(values: dict[str, Any] | None = None, **opts: Any) -> list[dict[str, Any]]:
        include_tests = opts.pop("include_tests", True)
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, **opts)
        return documents(rendered, include_tests=include_tests)

    return _render
