"""Gates and shadows for every task, through the inferencer's real classifiers (ONNX exports).

Per task, two runs of different random models (``task_models``) and a gate file whose labels
are the first run's own predictions: the gate scores that run perfectly (accuracy 1, mse 0)
and the other no better; a shadow identical to the answering run agrees on every text (every
word for a tagger).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from services.inferencer.classifiers import load_classifier
from services.inferencer.gate import GateActivities
from services.inferencer.model_cache import ModelCache
from services.inferencer.shadow import ShadowScorer
from services.trainer.run_folder.paths import LocalPathRoots
from shared import metrics
from shared.onnx_export import export_onnx
from shared.rollout_types import GateRequest
from shared.runs import write_record
from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TASKS, TOKEN_CLASSIFICATION
from shared.types import PromotionGate
from tests.helpers.runs import sample_record
from tests.inferencer.task_models import GENRES, SENTIMENTS, TAGS, TEXTS, build_task_model

LABELS = {SINGLE_LABEL: SENTIMENTS, MULTI_LABEL: GENRES, REGRESSION: [], TOKEN_CLASSIFICATION: TAGS}
# The metric each task's gate compares, and its perfect value.
PERFECT = {
    SINGLE_LABEL: ("eval_f1_macro", 1.0),
    MULTI_LABEL: ("eval_subset_accuracy", 1.0),
    REGRESSION: ("eval_mse", 0.0),
    TOKEN_CLASSIFICATION: ("eval_accuracy", 1.0),
}
GATE_TEXTS = [text for text in TEXTS if text.strip()]


def make_run(runs_root: Path, run_id: str, task: str, seed: int, models: Path) -> str:
    model_dir = build_task_model(models / run_id, task, seed=seed)
    export_onnx(model_dir)
    shutil.copytree(model_dir, runs_root / run_id)
    write_record(
        runs_root / run_id,
        sample_record(run_id, LABELS[task], model_name=str(model_dir), task=task),
    )
    return run_id


def predictions(run_dir: Path) -> list[dict[str, Any]]:
    classifier = load_classifier(run_dir, "cpu")
    return classifier.predict(GATE_TEXTS, 128, 32, lambda done, size: None)


def truth_of(task: str, prediction: dict[str, Any]) -> Any:
    if task == SINGLE_LABEL:
        return prediction["label"]
    if task == MULTI_LABEL:
        return prediction["labels"]
    if task == REGRESSION:
        return prediction["score"]
    return prediction["tags"]


@pytest.mark.parametrize("task", TASKS)
def test_a_gate_and_a_shadow_per_task(task: str, runs_root: Path, tmp_path: Path) -> None:
    first = make_run(runs_root, "first", task, 0, tmp_path / "models")
    second = make_run(runs_root, "second", task, 1, tmp_path / "models")
    answered = predictions(runs_root / first)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "".join(
            json.dumps({"sentence": text, "label": truth_of(task, prediction)}) + "\n"
            for text, prediction in zip(GATE_TEXTS, answered, strict=True)
        ),
        encoding="utf-8",
    )
    cache = ModelCache(4)
    gates = GateActivities(runs_root, cache, LocalPathRoots.of([tmp_path]))
    metric, perfect = PERFECT[task]
    request = GateRequest(
        candidate_run_id=second,
        current_run_id=first,
        gate=PromotionGate(metric=metric, data_file=str(held_out)),
    )
    scores = gates.evaluate(request)
    assert scores.rows == len(GATE_TEXTS)
    assert scores.current_score == pytest.approx(perfect, abs=1e-6)
    # Nothing beats a perfect score: the second run passes only by equalling it.
    assert scores.passes(0.0) == (scores.candidate_score == pytest.approx(perfect, abs=1e-6))
    assert not scores.passes(0.01)

    shutil.copytree(runs_root / first, runs_root / "first-copy")
    compared = metrics.SHADOW_COMPARED.labels(task=task)._value.get()
    agreed = metrics.SHADOW_AGREED.labels(task=task)._value.get()
    shadow = ShadowScorer(runs_root, cache)
    assert shadow.submit("prod", "first-copy", task, GATE_TEXTS, None, 128, answered)
    assert shadow.wait_idle(120)
    units = sum(len(p["tags"]) for p in answered) if task == TOKEN_CLASSIFICATION else len(answered)
    assert metrics.SHADOW_COMPARED.labels(task=task)._value.get() == compared + units
    assert metrics.SHADOW_AGREED.labels(task=task)._value.get() == agreed + units
