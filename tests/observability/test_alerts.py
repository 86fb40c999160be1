"""The alert rules recommended in docs/observability.md are valid and read real metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.helpers.prometheus import prometheus_get
from tests.observability.conftest import ObservedStack

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
_METRIC = re.compile(r"\b((?:bert|temporal)_[a-z0-9_]+|up)\b(?!\s*\()")


def recommended_rules() -> tuple[str, list[dict]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    rules_text = next(block for block in blocks if "groups:" in block)
    rules = [rule for group in yaml.safe_load(rules_text)["groups"] for rule in group["rules"]]
    return rules_text, rules


def test_rules_pass_promtool(tmp_path: Path) -> None:
    rules_text, rules = recommended_rules()
    names = {rule["alert"] for rule in rules}
    assert {"BertTrainingHeartbeatStale", "BertTrainingFailureRate"} <= names
    assert {"BertInferenceFailureRate", "BertInferenceLatencyP99High"} <= names
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make system-deps` (Debian's prometheus package)"
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text)
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_expression_reads_scraped_metrics(observed: ObservedStack) -> None:
    _, rules = recommended_rules()
    for rule in rules:
        expr = rule["expr"]
        prometheus_get(observed.prometheus_url, "/api/v1/query", {"query": expr})
        for metric in set(_METRIC.findall(expr)):
            series = prometheus_get(
                observed.prometheus_url,
                "/api/v1/series",
                {"match[]": metric, "start": observed.started_at},
            )
            assert series, f"{rule['alert']}: {metric} was never scraped"
