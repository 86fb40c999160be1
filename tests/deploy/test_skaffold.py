"""skaffold.yaml builds both Dockerfiles and sets image values the chart really reads."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from tests.deploy.chartlib import CHART_DIR, REPO_ROOT, Render, load_yaml, only

SKAFFOLD = load_yaml(REPO_ROOT / "skaffold.yaml")
VALUES = load_yaml(CHART_DIR / "values.yaml")


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """Skaffold's profile patches (JSON Patch, the `add` and `replace` ops it uses here)."""
    patched = copy.deepcopy(config)
    for patch in patches:
        assert patch["op"] in ("add", "replace"), patch
        *parents, leaf = patch["path"].lstrip("/").split("/")
        node: Any = patched
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]  # must exist
        if isinstance(node, list):
            assert patch["op"] == "add", patch["path"]
            node.insert(int(leaf), patch["value"])
        else:
            assert patch["op"] == "add" or leaf in node, patch["path"]
            node[leaf] = patch["value"]
    return patched


def effective_configs() -> list[tuple[str, dict[str, Any]]]:
    """The base config and each profile's config after its patches."""
    base = {k: v for k, v in SKAFFOLD.items() if k != "profiles"}
    configs = [("default", base)]
    for profile in SKAFFOLD.get("profiles", []):
        assert set(profile) <= {"name", "activation", "patches"}, "profiles only patch"
        configs.append((profile["name"], apply_patches(base, profile["patches"])))
    return configs


def releases() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, release)
        for name, config in effective_configs()
        for release in config["deploy"]["helm"]["releases"]
    ]


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
    for _, config in effective_configs():
        artifacts = config["build"]["artifacts"]
        assert {a["image"] for a in artifacts} == {
            "bert-finetune-trainer",
            "bert-finetune-inferencer",
        }
        for artifact in artifacts:
            assert artifact.get("context", ".") == "."
            dockerfile = artifact["docker"]["dockerfile"]
            assert (REPO_ROOT / dockerfile).is_file()
            worker = artifact["image"].removeprefix("bert-finetune-")
            assert dockerfile == f"services/{worker}/Dockerfile"


def test_the_release_is_written_once_and_profiles_patch_it() -> None:
    text = (REPO_ROOT / "skaffold.yaml").read_text()
    assert text.count("chartPath:") == 1 and text.count("setValueTemplates:") == 1
    configs = dict(effective_configs())
    assert configs["dev"]["deploy"]["helm"]["releases"][0]["valuesFiles"] == [
        "k8s-dev/bert-finetune-values.yaml"
    ]
    trainer = configs["dev"]["build"]["artifacts"][0]
    assert trainer["image"] == "bert-finetune-trainer"
    assert trainer["docker"]["buildArgs"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert configs["gpu"]["deploy"]["helm"]["releases"][0]["setValues"]["gpu.enabled"] is True
    assert "local" not in configs["default"]["build"]


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
    for worker, built in (
        ("trainer", "trainer"),
        ("inferencer", "inferencer"),
        ("controller", "trainer"),
    ):
        deployment = only(objects, "Deployment", worker)
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"localhost:5001/bert_finetune_{built}:abc123@sha256:f00"
