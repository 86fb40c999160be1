"""The worker Dockerfiles: lint clean and built the way the chart expects to run them."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.chartlib import REPO_ROOT
from tests.helpers.binaries import hadolint

DOCKERFILES = {
    "trainer": REPO_ROOT / "services" / "trainer" / "Dockerfile",
    "inferencer": REPO_ROOT / "services" / "inferencer" / "Dockerfile",
}


@pytest.mark.parametrize("worker", DOCKERFILES)
def test_hadolint_is_clean(worker: str) -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILES[worker])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\nCMD python app.py\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("worker", DOCKERFILES)
def test_image_runs_the_worker_as_non_root_from_a_multi_stage_build(worker: str) -> None:
    text = DOCKERFILES[worker].read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    assert len(stages) >= 2 and stages[0][1] == "builder"
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    assert re.search(r"^USER 10001:10001$", text, flags=re.M)  # the chart's runAsUser
    assert f'CMD ["worker", "{worker}"]' in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "bert-finetune"]' in text
    assert "HF_HOME=/cache/huggingface" in text  # the chart's cache emptyDir
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+", text)
    assert "constraints.txt" not in text  # the CPU pin is for local/CI installs only
    assert f"pip install --no-deps --require-hashes -r requirements/{worker}.lock" in text
    # No compilers or package caches in the final stage.
    final = text[text.rindex("\nFROM ") :]
    assert "build-essential" not in final and "gcc" not in final
    assert "rm -rf /var/lib/apt/lists/*" in final


@pytest.mark.parametrize("worker", DOCKERFILES)
def test_image_is_precompiled_and_smoke_imports_its_worker(worker: str) -> None:
    """Checked statically: no Docker engine here. A read-only root filesystem cannot take
    .pyc files at run time, so the build compiles everything and keeps __pycache__."""
    text = DOCKERFILES[worker].read_text()
    builder = text[: text.rindex("\nFROM ")]
    assert "python -m compileall" in builder
    assert "__pycache__" not in text
    smoke = re.search(r'python -c "import ([^"]+)"', builder)
    assert smoke, "no build-time smoke import"
    modules = {m.strip() for m in smoke[1].split(",")}
    assert {f"services.{worker}.worker", "bert_finetune.cli", "shared.namespace"} <= modules
    for module in modules - {"torch", "transformers", "onnxruntime", "tokenizers"}:
        assert (REPO_ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    # The compile and the import come after the last COPY of the sources.
    assert builder.rindex("COPY bert_finetune") < builder.index("compileall")


def test_trainer_uses_cuda_torch_and_inferencer_cpu_torch() -> None:
    trainer = DOCKERFILES["trainer"].read_text()
    inferencer = DOCKERFILES["inferencer"].read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-ubuntu\S+$", trainer, flags=re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu\d+$", trainer, re.M)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in inferencer
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+\.\d+-slim", inferencer, flags=re.M)


def test_dockerignore_keeps_only_what_the_build_copies() -> None:
    rules = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert rules[rules.index("**")] == "**"  # deny everything, then allow
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for dockerfile in DOCKERFILES.values():
        copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), flags=re.M)
        for source in " ".join(copied).split():
            assert any(fnmatch.fnmatch(source, rule) for rule in allowed), (
                f"{dockerfile} copies {source}, which .dockerignore drops"
            )
            assert (REPO_ROOT / source).exists(), f"{dockerfile} copies missing {source}"
