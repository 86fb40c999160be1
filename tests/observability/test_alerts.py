"""The chart's alert rules: valid, unit-tested by promtool, and reading metrics that exist.

The rules live in one file, `charts/bert-finetune/alerts/bert-finetune.rules.yaml`, which the
chart ships as a PrometheusRule and docs/observability.md points to.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.helpers.binaries import promtool
from tests.helpers.prometheus import prometheus_get
from tests.observability.conftest import ObservedStack

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "bert-finetune" / "alerts" / "bert-finetune.rules.yaml"
UNIT_TESTS = Path(__file__).resolve().parent / "alerts.test.yaml"
_METRIC = re.compile(r"\b((?:bert|temporal)_[a-z0-9_]+|up)\b(?!\s*\()")
# What each alert must catch (issue: worker down, heartbeats stopped, runs failing,
# inference latency, queue backlog growing).
REQUIRED_ALERTS = {
    "BertWorkerDown",
    "BertWorkerNotPolling",
    "BertTrainingHeartbeatStale",
    "BertTrainingFailureRate",
    "BertInferenceFailureRate",
    "BertInferenceLatencyP99High",
    "BertTrainingQueueBacklog",
    "BertInferenceQueueBacklog",
}


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def run_unit_tests(test_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool(), "test", "rules", test_file.name],
        cwd=test_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rules_pass_promtool_check() -> None:
    assert {rule["alert"] for rule in rules()} == REQUIRED_ALERTS
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_on_synthetic_series_and_only_there() -> None:
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS.read_text()))
    assert tested == REQUIRED_ALERTS
    result = run_unit_tests(UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """Loosen one threshold: promtool must report the alert firing where it must not."""
    broken = RULES.read_text().replace(
        "bert_training_seconds_since_last_heartbeat) > 45",
        "bert_training_seconds_since_last_heartbeat) > 1",
    )
    assert broken != RULES.read_text()
    rules_copy = tmp_path / "rules" / RULES.name
    rules_copy.parent.mkdir()
    rules_copy.write_text(broken)
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(rules_copy)]
    test_copy = tmp_path / UNIT_TESTS.name
    test_copy.write_text(yaml.safe_dump(tests))
    result = run_unit_tests(test_copy)
    assert result.returncode != 0
    assert "BertTrainingHeartbeatStale" in result.stdout + result.stderr


def test_every_alert_expression_reads_scraped_metrics(observed: ObservedStack) -> None:
    for rule in rules():
        expr = rule["expr"]
        prometheus_get(observed.prometheus_url, "/api/v1/query", {"query": expr})
        for metric in set(_METRIC.findall(expr)):
            series = prometheus_get(
                observed.prometheus_url,
                "/api/v1/series",
                {"match[]": metric, "start": observed.started_at},
            )
            assert series, f"{rule['alert']}: {metric} was never scraped"
