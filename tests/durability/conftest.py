"""Collects what the durability tests measure and prints it after the run.

``pytest tests/durability`` ends with a "durability measurements" section; those numbers
are the ones quoted in docs/durability.md.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

_MEASUREMENTS: list[tuple[str, dict[str, object]]] = []


@pytest.fixture
def measure(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Callable[..., None]:
    def record(**values: object) -> None:
        for name, value in values.items():
            record_property(name, value)
        _MEASUREMENTS.append((request.node.name, values))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _MEASUREMENTS:
        return
    terminalreporter.section("durability measurements")
    for test, values in _MEASUREMENTS:
        shown = " ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )
        terminalreporter.write_line(f"{test}: {shown}")
