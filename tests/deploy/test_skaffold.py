"""skaffold.yaml builds both Dockerfiles and sets image values the chart really reads."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.chartlib import CHART_DIR, REPO_ROOT, Render, load_yaml, only

SKAFFOLD = load_yaml(REPO_ROOT / "skaffold.yaml")
VALUES = load_yaml(CHART_DIR / "values.yaml")


def releases() -> list[tuple[str, dict[str, Any]]]:
    found = [("default", r) for r in SKAFFOLD["deploy"]["helm"]["releases"]]
    for profile in SKAFFOLD.get("profiles", []):
        for release in profile.get("deploy", {}).get("helm", {}).get("releases", []):
            found.append((profile["name"], release))
    return found


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"{dotted} is not a key of values.yaml"
        node = node[key]
    return node


def artifact_images() -> set[str]:
    return {a["image"] for a in SKAFFOLD["build"]["artifacts"]}


def test_schema_version_and_profiles() -> None:
    assert re.fullmatch(r"skaffold/v4beta\d+", SKAFFOLD["apiVersion"])
    assert SKAFFOLD["kind"] == "Config"
    assert {p["name"] for p in SKAFFOLD["profiles"]} == {"dev", "gpu"}


def test_both_images_build_from_the_repo_root_with_their_dockerfile() -> None:
    artifacts = list(SKAFFOLD["build"]["artifacts"])
    for profile in SKAFFOLD["profiles"]:
        artifacts += profile.get("build", {}).get("artifacts", [])
    assert artifact_images() == {"bert-finetune-trainer", "bert-finetune-inferencer"}
    for artifact in artifacts:
        assert artifact.get("context", ".") == "."
        dockerfile = artifact["docker"]["dockerfile"]
        assert (REPO_ROOT / dockerfile).is_file()
        worker = artifact["image"].removeprefix("bert-finetune-")
        assert dockerfile == f"services/{worker}/Dockerfile"


@pytest.mark.parametrize(("profile", "release"), releases(), ids=lambda r: str(r)[:20])
def test_every_set_value_exists_in_values_yaml(profile: str, release: dict[str, Any]) -> None:
    assert (REPO_ROOT / release["chartPath"]).resolve() == CHART_DIR
    templates = release["setValueTemplates"]
    for key in list(templates) + list(release.get("setValues", {})):
        lookup(VALUES, key)
    for values_file in release.get("valuesFiles", []):
        assert (REPO_ROOT / values_file).is_file()
    # Every built image is injected as repository and tag@digest.
    for image in artifact_images():
        worker = image.removeprefix("bert-finetune-")
        var = image.replace("-", "_")
        assert templates[f"{worker}.image.repository"] == f"{{{{.IMAGE_REPO_{var}}}}}"
        assert templates[f"{worker}.image.tag"] == (
            f"{{{{.IMAGE_TAG_{var}}}}}@{{{{.IMAGE_DIGEST_{var}}}}}"
        )


@pytest.mark.parametrize(("profile", "release"), releases(), ids=lambda r: str(r)[:20])
def test_skaffold_values_reach_the_deployments(
    render: Render, profile: str, release: dict[str, Any]
) -> None:
    values: dict[str, Any] = {}
    for values_file in release.get("valuesFiles", []):
        values = load_yaml(REPO_ROOT / values_file)
    filled = {}
    for key, template in release["setValueTemplates"].items():
        filled[key] = re.sub(
            r"\{\{\.IMAGE_(REPO|TAG|DIGEST)_(\w+)\}\}",
            lambda m: {"REPO": f"localhost:5001/{m[2]}", "TAG": "abc123", "DIGEST": "sha256:f00"}[
                m[1]
            ],
            template,
        )
    for key, value in {**release.get("setValues", {}), **filled}.items():
        node = values
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    objects = render(values)
    for worker in ("trainer", "inferencer"):
        deployment = only(objects, "Deployment", worker)
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"localhost:5001/bert_finetune_{worker}:abc123@sha256:f00"
