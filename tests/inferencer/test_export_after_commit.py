"""``export_run``: a committed run's ONNX export, added after the commit under the run's lock.

The export is bound to the commit it was built from: published only while the run still
holds that commit, served only while it matches, built all or nothing.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from services.inferencer.classifiers import load_classifier
from services.inferencer.model_cache import ModelCache
from services.trainer.activities import export
from services.trainer.run_folder.run_directory import STAGING_DIR
from shared import onnx_export
from shared.export_types import EXPORT_FAILED
from shared.onnx_export import (
    CHECK_TEXTS_FILE,
    EXPORT_DIR,
    OnnxExportError,
    is_current_export,
    read_manifest,
    write_check_texts,
)
from shared.runs import RUN_MANIFEST, commit_digest
from tests.hardening.conftest import TrainedRun, copy_run
from tests.tiny import sentiment_rows

CHECK_TEXTS = [text for text, _ in sentiment_rows(120, seed=21)]


@pytest.fixture
def run_dir(trained_run: TrainedRun, runs_root: Path) -> Path:
    """A committed run without an export, holding the texts its commit keeps for one."""
    target = copy_run(trained_run.run_dir, runs_root, "committed")
    shutil.rmtree(target / EXPORT_DIR, ignore_errors=True)
    write_check_texts(target, CHECK_TEXTS)
    return target


def recommit(run_dir: Path) -> None:
    """What an overwrite does to the folder's record: a new commit (new run.json digest)."""
    record = json.loads((run_dir / RUN_MANIFEST).read_text(encoding="utf-8"))
    record["result"]["train_loss"] = 0.123
    (run_dir / RUN_MANIFEST).write_text(json.dumps(record), encoding="utf-8")


def staging_leftovers(runs_root: Path) -> list[Path]:
    return list((runs_root / STAGING_DIR).glob("*")) if (runs_root / STAGING_DIR).exists() else []


def test_the_export_is_bound_to_the_commit_and_made_once(run_dir: Path, runs_root: Path) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in run_dir.iterdir()}

    output = export.export_run(runs_root, "committed")

    assert (output.outcome, output.exported_run_id) == ("exported", "committed")
    manifest = read_manifest(run_dir)
    assert manifest is not None
    assert manifest.source_commit == commit_digest(run_dir)
    assert manifest.served_graph == output.served_graph
    # The int8 decision used the texts the commit kept.
    assert manifest.check is not None and manifest.check.texts == len(CHECK_TEXTS)
    assert is_current_export(run_dir)
    # The run's own files are untouched: the export only adds its folder.
    after = {path.name: path.stat().st_mtime_ns for path in run_dir.iterdir()}
    assert after.pop(EXPORT_DIR) and after == before
    assert staging_leftovers(runs_root) == []

    again = export.export_run(runs_root, "committed")
    assert (again.outcome, again.served_graph) == ("already_exported", output.served_graph)


def test_an_export_built_while_the_run_was_overwritten_is_dropped(
    run_dir: Path, runs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = export.build_export

    def build_while_overwriting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        manifest = real_build(*args, **kwargs)
        # An overwrite claimed the folder meanwhile: its record is gone while it trains.
        (run_dir / RUN_MANIFEST).unlink()
        return manifest

    monkeypatch.setattr(export, "build_export", build_while_overwriting)
    output = export.export_run(runs_root, "committed")

    assert output.outcome == "superseded" and output.served_graph is None
    assert not (run_dir / EXPORT_DIR).exists()
    assert staging_leftovers(runs_root) == []


def test_a_run_committed_anew_during_the_build_gets_the_new_commits_export(
    run_dir: Path, runs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new commit's own export request found this one running: this one follows it."""
    real_build = export.build_export
    builds: list[str] = []

    def build_then_recommit(*args: Any, **kwargs: Any) -> dict[str, Any]:
        builds.append(kwargs["source_commit"])
        manifest = real_build(*args, **kwargs)
        if len(builds) == 1:
            recommit(run_dir)
        return manifest

    monkeypatch.setattr(export, "build_export", build_then_recommit)
    output = export.export_run(runs_root, "committed")

    assert output.outcome == "exported"
    assert len(builds) == 2 and builds[1] == commit_digest(run_dir) != builds[0]
    manifest = read_manifest(run_dir)
    assert manifest is not None and manifest.source_commit == commit_digest(run_dir)
    assert staging_leftovers(runs_root) == []


def test_a_cancelled_export_publishes_nothing(run_dir: Path, runs_root: Path) -> None:
    abandoned = threading.Event()
    abandoned.set()

    assert export.export_run(runs_root, "committed", abandoned).outcome == "abandoned"
    assert not (run_dir / EXPORT_DIR).exists()
    assert staging_leftovers(runs_root) == []


def test_a_failed_export_is_a_typed_error_and_leaves_nothing(
    run_dir: Path, runs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> dict[str, Any]:
        raise OnnxExportError("the ONNX graph differs from PyTorch by 1.0e+00 in its logits")

    monkeypatch.setattr(onnx_export, "_build", broken)
    with pytest.raises(ApplicationError) as caught:
        export.export_run(runs_root, "committed")

    assert caught.value.type == EXPORT_FAILED and caught.value.non_retryable
    assert "stays served by PyTorch" in caught.value.message
    assert "\n" not in caught.value.message
    assert not (run_dir / EXPORT_DIR).exists()
    assert staging_leftovers(runs_root) == []


def test_a_run_without_kept_texts_gets_the_fp32_graph(run_dir: Path, runs_root: Path) -> None:
    (run_dir / CHECK_TEXTS_FILE).unlink()  # committed before the texts were kept

    output = export.export_run(runs_root, "committed")

    assert (output.outcome, output.served_graph) == ("exported", onnx_export.FP32_GRAPH)


def test_the_inferencer_switches_to_the_export_as_soon_as_it_lands(
    run_dir: Path, runs_root: Path
) -> None:
    cache = ModelCache(max_models=2)
    # Committed, export not there yet: PyTorch serves the run.
    assert cache.get(run_dir, "cpu").classifier.backend == "torch"

    export.export_run(runs_root, "committed")
    # The export landed: the cached PyTorch model is replaced by ONNX Runtime at once.
    assert cache.get(run_dir, "cpu").classifier.backend == "onnx"
    assert load_classifier(run_dir, "cpu").backend == "onnx"


def test_an_export_naming_another_commit_is_made_again(run_dir: Path, runs_root: Path) -> None:
    export.export_run(runs_root, "committed")
    recommit(run_dir)  # e.g. a run folder copied under a new id: its record was rewritten
    assert not is_current_export(run_dir)

    output = export.export_run(runs_root, "committed")

    assert output.outcome == "exported"
    manifest = read_manifest(run_dir)
    assert manifest is not None and manifest.source_commit == commit_digest(run_dir)


def test_a_missing_run_is_run_not_found(runs_root: Path) -> None:
    with pytest.raises(ApplicationError) as caught:
        export.export_run(runs_root, "never-trained")
    assert caught.value.type == "RunNotFound"
