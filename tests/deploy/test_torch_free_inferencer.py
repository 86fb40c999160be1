"""The default inferencer image has no PyTorch: it serves every run with an ONNX export and
refuses, naming the fix, a run without one. Checked here in a process where torch cannot be
imported, as in the image (services/inferencer/Dockerfile, `WITH_TORCH=false`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from shared import model_loading
from shared.errors import MODEL_LOAD_ERROR
from tests.deploy.chartlib import REPO_ROOT
from tests.tiny import build_tiny_bert, sentiment_rows

# What the image lacks: any import of torch fails, and find_spec cannot find it either.
NO_TORCH = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def test_a_run_without_an_export_is_refused_with_the_export_command(monkeypatch) -> None:
    monkeypatch.setattr(model_loading, "torch_available", lambda: False)
    with pytest.raises(ApplicationError) as err:
        model_loading.load_for_serving("/data/bert_runs/exp-run-0", "exp-run-0")
    assert err.value.type == MODEL_LOAD_ERROR and err.value.non_retryable
    message = str(err.value)
    assert "has no ONNX export" in message and "no PyTorch" in message
    assert "`bert-finetune export exp-run-0`" in message and "-torch image" in message


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def test_the_worker_modules_import_without_torch() -> None:
    result = run_without_torch(
        """
        import onnxruntime, tokenizers
        import services.inferencer.worker, services.inferencer.activities
        import bert_finetune.cli, shared.namespace
        from shared.model_loading import torch_available
        assert not torch_available()
        # A request with use_gpu is served on the CPU here, not failed with an ImportError.
        from services.inferencer.activities import serving_device
        assert serving_device(True) == "cpu" and serving_device(False) == "cpu"
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok")
        """
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.slow
def test_exports_are_served_and_runs_without_one_refused_without_torch(tmp_path: Path) -> None:
    from shared.onnx_export import export_onnx

    exported = build_tiny_bert(tmp_path / "exported-run")
    export_onnx(exported, [text for text, _ in sentiment_rows(60, seed=3)])
    plain = tmp_path / "plain-run"
    shutil.copytree(exported, plain)
    shutil.rmtree(plain / "onnx")
    result = run_without_torch(
        f"""
        import json
        from pathlib import Path
        from temporalio.exceptions import ApplicationError
        from services.inferencer.classifiers import load_classifier

        served = load_classifier(Path({str(exported)!r}), "cpu")
        labels, confidences = served.classify(
            ["a great film", "boring and bad"], 64, 8, lambda done, size: None
        )
        try:
            load_classifier(Path({str(plain)!r}), "cpu")
            refused = None
        except ApplicationError as err:
            refused = {{"type": err.type, "message": str(err)}}
        print(json.dumps({{"backend": served.backend, "labels": labels, "refused": refused,
                           "torch": "torch" in sys.modules}}))
        """
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["backend"] == "onnx" and len(outcome["labels"]) == 2
    assert outcome["torch"] is False
    assert outcome["refused"]["type"] == MODEL_LOAD_ERROR
    assert "`bert-finetune export plain-run`" in outcome["refused"]["message"]
