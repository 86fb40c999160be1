"""The chart README is generated from values.yaml's `# --` comments and kept current."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.chartlib import CHART_DIR, REPO_ROOT
from tests.deploy.test_chart import _documented_paths


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "chart_readme", REPO_ROOT / "tools" / "chart_readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_current() -> None:
    generator = load_generator()
    assert (CHART_DIR / "README.md").read_text() == generator.render(), (
        "charts/bert-finetune/README.md is stale: run `make chart-readme`"
    )


def test_readme_lists_every_documented_leaf_value_with_its_default() -> None:
    generator = load_generator()
    listed = {key: default for key, _, default, _ in generator.rows()}
    _, documented = _documented_paths()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for path in documented:
        dotted = ".".join(path)
        if any(key.startswith(f"{dotted}.") for key in listed):
            continue  # a section: its documented keys are listed instead
        assert dotted in listed, dotted
        node = values
        for key in path:
            node = node[key]
        assert listed[dotted].strip("`").replace("\\|", "|") == generator.json.dumps(
            node, separators=(", ", ": ")
        )
    assert len(listed) > 150


def test_a_changed_comment_makes_the_readme_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chart = tmp_path / "bert-finetune"
    shutil.copytree(CHART_DIR, chart)
    values = chart / "values.yaml"
    values.write_text(
        values.read_text().replace(
            "# -- Log level of both workers", "# -- Log level of the workers"
        )
    )
    generator = load_generator()
    monkeypatch.setattr(generator, "CHART", chart)
    monkeypatch.setattr(generator, "README", chart / "README.md")
    assert generator.render() != (CHART_DIR / "README.md").read_text()
    assert "Log level of the workers" in generator.render()
