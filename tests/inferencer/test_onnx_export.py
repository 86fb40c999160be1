"""``export_onnx``: the export loads, reproduces PyTorch, and is written all or nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from services.inferencer.classifiers import OnnxClassifier, TorchClassifier
from shared import onnx_export
from shared.errors import MODEL_LOAD_ERROR
from shared.onnx_export import (
    EXPORT_DIR,
    EXPORT_MANIFEST,
    OnnxExportError,
    commit_exporter,
    export_onnx,
)
from tests.hardening.conftest import TrainedRun
from tests.tiny import sentiment_rows

CHECK_TEXTS = [text for text, _ in sentiment_rows(200, seed=11)]
# Unseen texts, including ones longer than a batch's neighbours and an empty string.
TEXTS = [text for text, _ in sentiment_rows(120, seed=12)] + [
    "",
    "good " * 40,
    "UNKNOWN words Only, and punctuation!",
]


def ignore_batches(done: int, size: int) -> None:
    del done, size


@pytest.fixture
def model_dir(trained_run: TrainedRun, tmp_path: Path) -> Path:
    """A private copy of the trained run's model files, without any export it may have."""
    target = tmp_path / "model"
    shutil.copytree(trained_run.run_dir, target)
    shutil.rmtree(target / EXPORT_DIR, ignore_errors=True)
    return target


def test_export_reproduces_pytorch_logits_and_labels(model_dir: Path) -> None:
    export = export_onnx(model_dir, CHECK_TEXTS)

    assert export == model_dir / EXPORT_DIR
    manifest = json.loads((export / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    assert manifest["check"]["texts"] == len(CHECK_TEXTS)
    assert manifest["check"]["max_fp32_logit_difference"] < 1e-4
    assert manifest["label_names"] == ["negative", "positive"]
    assert (export / manifest["served_graph"]).is_file()
    assert (export / manifest["tokenizer"]).is_file()
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]

    torch_labels, torch_confidences = TorchClassifier(model_dir, "cpu").classify(
        TEXTS, 128, 16, ignore_batches
    )
    onnx = OnnxClassifier(model_dir)
    assert onnx.graph == manifest["served_graph"]
    onnx_labels, onnx_confidences = onnx.classify(TEXTS, 128, 16, ignore_batches)
    assert onnx_labels == torch_labels
    assert max(abs(a - b) for a, b in zip(onnx_confidences, torch_confidences, strict=True)) < 0.02


def test_the_fp32_graph_matches_pytorch_to_float_precision(model_dir: Path) -> None:
    export = export_onnx(model_dir)  # no check texts: fp32 only

    manifest = json.loads((export / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    assert manifest["served_graph"] == onnx_export.FP32_GRAPH
    assert manifest["check"]["int8_disagreements"] is None
    assert not (export / onnx_export.INT8_GRAPH).exists()
    torch_labels, torch_confidences = TorchClassifier(model_dir, "cpu").classify(
        TEXTS, 32, 7, ignore_batches
    )
    onnx_labels, onnx_confidences = OnnxClassifier(model_dir).classify(TEXTS, 32, 7, ignore_batches)
    assert onnx_labels == torch_labels
    assert max(abs(a - b) for a, b in zip(onnx_confidences, torch_confidences, strict=True)) < 1e-4


def test_int8_is_dropped_when_its_labels_disagree(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gate no graph can pass: the export must fall back to serving fp32.
    monkeypatch.setattr(onnx_export, "MAX_INT8_DISAGREEMENT", -1.0)

    export = export_onnx(model_dir, CHECK_TEXTS)

    manifest = json.loads((export / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    assert manifest["served_graph"] == onnx_export.FP32_GRAPH
    assert manifest["check"]["int8_disagreements"] is not None
    assert not (export / onnx_export.INT8_GRAPH).exists()


def test_a_failed_export_leaves_nothing_behind(model_dir: Path) -> None:
    (model_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    before = sorted(p.name for p in model_dir.iterdir())

    with pytest.raises(OnnxExportError, match="ONNX export of 'model' failed"):
        export_onnx(model_dir, CHECK_TEXTS)

    assert sorted(p.name for p in model_dir.iterdir()) == before


def test_exporting_again_replaces_the_whole_export(model_dir: Path) -> None:
    export_onnx(model_dir, CHECK_TEXTS)
    stale = model_dir / EXPORT_DIR / "left-over.onnx"
    stale.write_bytes(b"old")

    export_onnx(model_dir)

    assert not stale.exists()
    manifest = json.loads((model_dir / EXPORT_DIR / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    assert manifest["served_graph"] == onnx_export.FP32_GRAPH


def test_the_commit_step_exports_into_staging_and_never_fails_the_commit(
    model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    export = commit_exporter(CHECK_TEXTS)

    export(model_dir)
    export(broken)  # logged as export.failed; the run commits without an export

    assert (model_dir / EXPORT_DIR / EXPORT_MANIFEST).is_file()
    assert not (broken / EXPORT_DIR).exists()
    assert not [p for p in broken.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damaged", ["served_graph", "tokenizer"])
def test_a_damaged_export_is_a_model_load_error(model_dir: Path, damaged: str) -> None:
    export = export_onnx(model_dir)
    manifest = json.loads((export / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    (export / manifest[damaged]).write_bytes(b"\x00 truncated by a bad copy")

    with pytest.raises(ApplicationError, match="could not be loaded") as raised:
        OnnxClassifier(model_dir)

    assert raised.value.type == MODEL_LOAD_ERROR
    assert raised.value.non_retryable
