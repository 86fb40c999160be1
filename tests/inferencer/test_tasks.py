"""Every task through the export and both serving backends (issue 22, serving side).

Models of each task are built directly with transformers (``task_models``), exported, and
served by PyTorch and by ONNX Runtime: same predictions (labels, label sets, tags, entities;
scores to float precision), in the contract's shape (``BertInferenceResult.predictions``).
Entity offsets hold on texts with irregular whitespace; text pairs are validated against the
run; the int8 check is defined per task.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from services.inferencer.activities import InferenceActivities, check_result_size
from services.inferencer.classifiers import OnnxClassifier, TorchClassifier, load_classifier
from services.inferencer.model_cache import ModelCache
from shared import onnx_export
from shared.errors import INVALID_CONFIG
from shared.manifests import ExportManifest
from shared.onnx_export import EXPORT_DIR, EXPORT_MANIFEST, export_onnx
from shared.runs import write_record
from shared.task_outputs import entities, model_task, word_spans
from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TASKS, TOKEN_CLASSIFICATION
from shared.types import (
    MAX_INFERENCE_PAYLOAD_BYTES,
    BertInferenceRequest,
    inference_payload_bytes,
)
from tests.helpers.runs import sample_record
from tests.inferencer.task_models import (
    GENRES,
    IRREGULAR_TEXTS,
    PAIRS,
    SENTIMENTS,
    TAGS,
    TEXTS,
    build_task_model,
)

LABELS = {SINGLE_LABEL: SENTIMENTS, MULTI_LABEL: GENRES, REGRESSION: [], TOKEN_CLASSIFICATION: TAGS}
SEQUENCE_TASKS = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)


def ignore_batches(done: int, size: int) -> None:
    del done, size


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One model per task, exported without check texts (the fp32 graph is served)."""
    root = tmp_path_factory.mktemp("task-models")
    built = {}
    for task in TASKS:
        model_dir = build_task_model(root / task, task)
        export_onnx(model_dir)
        built[task] = model_dir
    return built


def texts_of(task: str) -> list[str]:
    return IRREGULAR_TEXTS if task == TOKEN_CLASSIFICATION else TEXTS


def assert_same_predictions(task: str, got: list[dict[str, Any]], expected: list[dict[str, Any]]):
    """Same labels, label sets, tags and entities; scores equal to float precision."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        if task == SINGLE_LABEL:
            assert (a["label"], a["label_id"]) == (b["label"], b["label_id"])
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        elif task == MULTI_LABEL:
            assert a["labels"] == b["labels"]
            assert a["scores"].keys() == b["scores"].keys()
            for name in a["scores"]:
                assert a["scores"][name] == pytest.approx(b["scores"][name], abs=1e-5)
        elif task == REGRESSION:
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        else:
            assert a["tags"] == b["tags"]
            assert len(a["entities"]) == len(b["entities"])
            for x, y in zip(a["entities"], b["entities"], strict=True):
                assert {k: x[k] for k in ("label", "start", "end", "text")} == {
                    k: y[k] for k in ("label", "start", "end", "text")
                }
                assert x["score"] == pytest.approx(y["score"], abs=1e-5)


def assert_contract_shape(task: str, texts: list[str], predictions: list[dict[str, Any]]) -> None:
    assert len(predictions) == len(texts)
    for text, p in zip(texts, predictions, strict=True):
        if task == SINGLE_LABEL:
            assert set(p) == {"label", "label_id", "score"}
            assert p["label"] == SENTIMENTS[p["label_id"]] and 0.5 <= p["score"] <= 1
        elif task == MULTI_LABEL:
            assert set(p) == {"labels", "scores"}
            assert list(p["scores"]) == GENRES
            assert p["labels"] == [name for name in GENRES if p["scores"][name] >= 0.5]
        elif task == REGRESSION:
            assert set(p) == {"score"} and isinstance(p["score"], float)
        else:
            assert set(p) == {"tags", "entities"}
            assert len(p["tags"]) == len(text.split()) and set(p["tags"]) <= set(TAGS)
            for entity in p["entities"]:
                assert set(entity) == {"label", "start", "end", "text", "score"}
                assert text[entity["start"] : entity["end"]] == entity["text"]
                assert 0 <= entity["score"] <= 1


@pytest.mark.parametrize("task", TASKS)
def test_both_backends_serve_every_task_alike(models: dict[str, Path], task: str) -> None:
    model_dir = models[task]
    manifest = ExportManifest.read(model_dir / EXPORT_DIR / EXPORT_MANIFEST)
    assert manifest.task == task
    # Single-label exports stay version 1 (the previous release serves them); the others
    # are version 2, which it refuses rather than misreads.
    assert manifest.version == (1 if task == SINGLE_LABEL else 2)
    assert model_task(model_dir) == task

    texts = texts_of(task)
    torch_side = TorchClassifier(model_dir, "cpu")
    onnx_side = OnnxClassifier(model_dir)
    assert torch_side.task == onnx_side.task == task
    assert onnx_side.label_names == torch_side.label_names
    expected = torch_side.predict(texts, 128, 3, ignore_batches)
    got = onnx_side.predict(texts, 128, 3, ignore_batches)
    assert_contract_shape(task, texts, expected)
    assert_same_predictions(task, got, expected)
    # Batches of other sizes (other paddings) change nothing.
    assert_same_predictions(task, onnx_side.predict(texts, 128, 64, ignore_batches), expected)
    if task == TOKEN_CLASSIFICATION:
        assert any(p["entities"] for p in expected)


@pytest.mark.parametrize("task", SEQUENCE_TASKS)
def test_pairs_are_encoded_as_pairs_by_both_backends(models: dict[str, Path], task: str) -> None:
    torch_side = TorchClassifier(models[task], "cpu")
    onnx_side = OnnxClassifier(models[task])
    with_pairs = torch_side.predict(TEXTS, 128, 4, ignore_batches, PAIRS)
    assert_same_predictions(
        task, onnx_side.predict(TEXTS, 128, 4, ignore_batches, PAIRS), with_pairs
    )
    alone = torch_side.predict(TEXTS, 128, 4, ignore_batches)
    assert with_pairs != alone  # the second text reached the model
    # tokenizer(text, text_pair): what the trainer feeds a pair model.
    encoded = torch_side.tokenizer(TEXTS[0], PAIRS[0])
    assert 1 in encoded["token_type_ids"]


def test_only_single_label_runs_classify(models: dict[str, Path]) -> None:
    labels, confidences = OnnxClassifier(models[SINGLE_LABEL]).classify(
        TEXTS, 128, 4, ignore_batches
    )
    predictions = OnnxClassifier(models[SINGLE_LABEL]).predict(TEXTS, 128, 4, ignore_batches)
    assert labels == [p["label_id"] for p in predictions]
    assert confidences == [p["score"] for p in predictions]
    with pytest.raises(ApplicationError) as refused:
        OnnxClassifier(models[REGRESSION]).classify(TEXTS, 128, 4, ignore_batches)
    assert refused.value.type == INVALID_CONFIG


def test_entity_offsets_index_the_text_as_sent(models: dict[str, Path]) -> None:
    texts = [*IRREGULAR_TEXTS, "\tjohn  \u3000smith\r\nlives\x1cin  paris\u2028new york \u00a0"]
    for classifier in (TorchClassifier(models[TOKEN_CLASSIFICATION], "cpu"),
                       OnnxClassifier(models[TOKEN_CLASSIFICATION])):  # fmt: skip
        for text, p in zip(texts, classifier.predict(texts, 128, 2, ignore_batches), strict=True):
            words = text.split()
            spans = word_spans(text)
            assert [text[a:b] for a, b in spans] == words
            assert len(p["tags"]) == len(words)
            for entity in p["entities"]:
                piece = text[entity["start"] : entity["end"]]
                assert piece == entity["text"]
                # Whole words, from a word's first character to a word's last.
                assert entity["start"] in [a for a, _ in spans]
                assert entity["end"] in [b for _, b in spans]
                assert piece.split() == [
                    w for (a, b), w in zip(spans, words, strict=True)
                    if entity["start"] <= a and b <= entity["end"]
                ]  # fmt: skip


def test_words_beyond_max_seq_length_are_tagged_outside(models: dict[str, Path]) -> None:
    text = " ".join(["john smithson lives in newton"] * 6)
    torch_side = TorchClassifier(models[TOKEN_CLASSIFICATION], "cpu")
    onnx_side = OnnxClassifier(models[TOKEN_CLASSIFICATION])
    encoded = torch_side.tokenizer(text.split(), is_split_into_words=True, truncation=True,
                                   max_length=12)  # fmt: skip
    seen = max(w for w in encoded.word_ids() if w is not None) + 1
    assert 0 < seen < len(text.split())
    (short,) = torch_side.predict([text], 12, 8, ignore_batches)
    (full,) = torch_side.predict([text], 128, 8, ignore_batches)
    assert len(short["tags"]) == len(full["tags"]) == len(text.split())
    assert short["tags"][seen:] == ["O"] * (len(text.split()) - seen)
    assert all(entity["end"] <= word_spans(text)[seen - 1][1] for entity in short["entities"])
    assert_same_predictions(
        TOKEN_CLASSIFICATION, onnx_side.predict([text], 12, 8, ignore_batches), [short]
    )


def test_entities_read_tags_as_seqeval_does() -> None:
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(7)
    for _ in range(500):
        tags = [rng.choice(TAGS) for _ in range(rng.randint(0, 12))]
        text = " ".join(f"w{i}" for i in range(len(tags)))
        scores = [rng.random() for _ in tags]
        found = entities(text, tags, scores, word_spans(text))
        expected = get_entities(tags)
        assert [(e["label"], e["start"], e["end"]) for e in found] == [
            (kind, word_spans(text)[first][0], word_spans(text)[last][1])
            for kind, first, last in expected
        ]
        for entity, (_, first, last) in zip(found, expected, strict=True):
            assert entity["score"] == pytest.approx(float(np.mean(scores[first : last + 1])))


@pytest.mark.parametrize("task", TASKS)
def test_the_int8_check_is_defined_per_task(
    task: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model_dir = build_task_model(tmp_path_factory.mktemp("int8") / task, task, seed=3)
    texts = texts_of(task) * 8
    pairs = None if task == TOKEN_CLASSIFICATION else PAIRS * 8
    export_onnx(model_dir, texts, pairs)
    manifest = ExportManifest.read(model_dir / EXPORT_DIR / EXPORT_MANIFEST)
    check = manifest.check
    assert check is not None and check.texts == len(texts)
    assert check.int8_unit == onnx_export.INT8_UNITS[task]
    words = sum(len(text.split()) for text in texts)
    assert check.int8_compared == (words if task == TOKEN_CLASSIFICATION else len(texts))
    assert check.int8_disagreements is not None
    allowed = int(onnx_export.MAX_INT8_DISAGREEMENT * check.int8_compared)
    int8_served = manifest.served_graph == onnx_export.INT8_GRAPH
    assert int8_served == (check.int8_disagreements <= allowed)
    assert (model_dir / EXPORT_DIR / onnx_export.INT8_GRAPH).exists() == int8_served
    if task == REGRESSION:
        assert check.int8_score_tolerance is not None and check.int8_score_tolerance > 0
        assert check.max_int8_score_difference is not None
    else:
        assert check.int8_score_tolerance is None


def test_int8_agreement_counts_the_units_of_each_task() -> None:
    agreement = onnx_export.int8_agreement
    single = [np.array([2.0, 1.0]), np.array([0.0, 1.0])]
    assert agreement(SINGLE_LABEL, SENTIMENTS, ["a", "b"], single, single[::-1], None) == (
        onnx_export.Int8Agreement(compared=2, disagreements=2)
    )
    multi_fp32 = [np.array([1.0, -1.0, 2.0, -3.0])]
    multi_int8 = [np.array([0.5, -0.5, 1.0, 0.1])]  # same probabilities' sides but one
    assert agreement(MULTI_LABEL, GENRES, ["a"], multi_fp32, multi_int8, None).disagreements == 1
    scores = [np.array([0.0]), np.array([5.0]), np.array([2.5])]
    moved = [np.array([0.05]), np.array([5.0]), np.array([2.8])]
    regression = agreement(REGRESSION, [], ["a", "b", "c"], scores, moved, None)
    assert regression.tolerance == pytest.approx(onnx_export.INT8_SCORE_TOLERANCE * 5.0)
    assert (regression.compared, regression.disagreements) == (3, 1)
    assert regression.max_score_difference == pytest.approx(0.3)
    tokens = [np.array([[9, 0, 0], [0, 9, 0], [0, 0, 9], [0, 9, 0]], dtype=float)]
    flipped = [np.array([[9, 0, 0], [0, 9, 0], [0, 9, 0], [9, 0, 0]], dtype=float)]
    ner = agreement(
        TOKEN_CLASSIFICATION, ["O", "B-X", "I-X"], ["a b-c"], tokens, flipped, [[None, 0, 1, 1]]
    )
    # Two words (the second one's later token does not count): one tag differs.
    assert (ner.compared, ner.disagreements) == (2, 1)


# ---- the activity: text pairs, result shape, payload budget --------------------------


def task_run(runs_root: Path, run_id: str, model_dir: Path, task: str, pairs: bool) -> Path:
    run_dir = runs_root / run_id
    shutil.copytree(model_dir, run_dir)
    record = sample_record(
        run_id,
        LABELS[task],
        model_name=str(model_dir),
        task=task,
        text_pair_column="second" if pairs else None,
    )
    write_record(run_dir, record)
    return run_dir


@pytest.fixture
def activities(models: dict[str, Path], runs_root: Path) -> InferenceActivities:
    task_run(runs_root, "pairs-run", models[SINGLE_LABEL], SINGLE_LABEL, pairs=True)
    task_run(runs_root, "scores-run", models[REGRESSION], REGRESSION, pairs=True)
    task_run(runs_root, "genres-run", models[MULTI_LABEL], MULTI_LABEL, pairs=False)
    task_run(runs_root, "tagger-run", models[TOKEN_CLASSIFICATION], TOKEN_CLASSIFICATION, False)
    return InferenceActivities(runs_root, ModelCache(4))


def infer(activities: InferenceActivities, **request: Any) -> Any:
    return activities.run_bert_inference(BertInferenceRequest(**request))


def refused(activities: InferenceActivities, **request: Any) -> str:
    with pytest.raises(ApplicationError) as err:
        infer(activities, **request)
    assert err.value.type == INVALID_CONFIG
    assert err.value.non_retryable
    return err.value.message


def test_text_pairs_are_required_exactly_for_runs_trained_on_pairs(
    activities: InferenceActivities, models: dict[str, Path]
) -> None:
    message = refused(activities, run_id="pairs-run", texts=TEXTS)
    assert "trained on text pairs (text_pair_column 'second')" in message
    assert "give text_pairs" in message
    message = refused(activities, run_id="genres-run", texts=TEXTS, text_pairs=PAIRS)
    assert "trained on single texts" in message and "remove text_pairs" in message
    refused(activities, run_id="tagger-run", texts=TEXTS, text_pairs=PAIRS)
    with pytest.raises(ValidationError, match="text_pairs: 1 second texts for 7 texts"):
        BertInferenceRequest(run_id="pairs-run", texts=TEXTS, text_pairs=PAIRS[:1])

    result = infer(activities, run_id="pairs-run", texts=TEXTS, text_pairs=PAIRS)
    expected = TorchClassifier(models[SINGLE_LABEL], "cpu").predict(
        TEXTS, 128, 32, ignore_batches, PAIRS
    )
    assert result.task == SINGLE_LABEL
    assert_same_predictions(SINGLE_LABEL, result.predictions, expected)
    # Single-label runs keep their parallel lists.
    assert result.labels == [p["label_id"] for p in result.predictions]
    assert result.label_names == [p["label"] for p in result.predictions]
    assert result.confidences == [p["score"] for p in result.predictions]


@pytest.mark.parametrize(
    ("run_id", "task", "pairs"),
    [
        ("scores-run", REGRESSION, PAIRS),
        ("genres-run", MULTI_LABEL, None),
        ("tagger-run", TOKEN_CLASSIFICATION, None),
    ],
)
def test_results_of_the_other_tasks_carry_predictions_only(
    activities: InferenceActivities, run_id: str, task: str, pairs: list[str] | None
) -> None:
    texts = texts_of(task)
    result = infer(activities, run_id=run_id, texts=texts, text_pairs=pairs)
    assert result.task == task
    assert (result.labels, result.label_names, result.confidences) == ([], [], [])
    assert_contract_shape(task, texts, result.predictions)
    # Plain JSON, as the temporal CLI shows it.
    assert json.loads(result.model_dump_json())["predictions"] == result.predictions


def test_the_payload_budget_counts_pairs_labels_and_words() -> None:
    texts = ["a b c d"] * 10
    plain = inference_payload_bytes(texts)
    assert inference_payload_bytes(texts, ["x y"] * 10) == plain + 10 * len('"x y"')
    assert inference_payload_bytes(texts, labels=["ab", "cd"]) > plain + 10 * 2 * 4
    assert inference_payload_bytes(texts, per_word=True) > plain + 10 * 4 * 64
    many = ["word " * 40] * 3000  # fine as single labels, too large with 40 tags each
    assert inference_payload_bytes(many) < MAX_INFERENCE_PAYLOAD_BYTES
    request = BertInferenceRequest(run_id="tagger-run", texts=many)
    check_result_size(request, SINGLE_LABEL, SENTIMENTS)
    with pytest.raises(ApplicationError, match="a tag per word and the entities"):
        check_result_size(request, TOKEN_CLASSIFICATION, TAGS)
    with pytest.raises(ApplicationError, match="a probability for each of its 300 labels"):
        check_result_size(
            BertInferenceRequest(run_id="genres-run", texts=["short"] * 600),
            MULTI_LABEL,
            [f"label-{i}" for i in range(300)],
        )


def test_a_served_export_of_a_newer_task_is_refused_not_misread(
    models: dict[str, Path], tmp_path: Path
) -> None:
    model_dir = tmp_path / "future"
    shutil.copytree(models[SINGLE_LABEL], model_dir)
    manifest_path = model_dir / EXPORT_DIR / EXPORT_MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest.update({"format_version": 2, "task": "span_extraction"})
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ApplicationError, match="unknown task 'span_extraction'"):
        load_classifier(model_dir, "cpu")


# ---- over HTTP (Open Inference Protocol v2) ------------------------------------------


def post(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def oip_body(texts: list[str], pairs: list[str] | None = None) -> dict[str, Any]:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]
    if pairs is not None:
        inputs.append(
            {"name": "text_pair", "datatype": "BYTES", "shape": [len(pairs)], "data": pairs}
        )
    return {"inputs": inputs}


async def test_http_outputs_follow_the_task(
    activities: InferenceActivities, runs_root: Path
) -> None:
    import asyncio

    from services.inferencer.http_server import HttpEndpoint
    from shared.settings import HttpSettings

    endpoint = HttpEndpoint(
        HttpSettings(port=0, bind_address="127.0.0.1"), runs_root, ModelCache(4)
    )
    await endpoint.start()

    async def call(path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        return await asyncio.to_thread(post, f"http://127.0.0.1:{endpoint.port}{path}", body)

    def outputs(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {output["name"]: output for output in answer["outputs"]}

    try:
        # Single-label on pairs: label and score, as the workflow answers.
        expected = infer(activities, run_id="pairs-run", texts=TEXTS, text_pairs=PAIRS)
        status, answer = await call("/v2/models/pairs-run/infer", oip_body(TEXTS, PAIRS))
        assert status == 200, answer
        got = outputs(answer)
        assert got["label"]["data"] == expected.label_names
        assert got["score"]["data"] == pytest.approx(expected.confidences, abs=1e-5)
        status, answer = await call("/v2/models/pairs-run/infer", oip_body(TEXTS))
        assert status == 400 and "input 'text_pair' is missing" in answer["error"]
        status, answer = await call("/v2/models/genres-run/infer", oip_body(TEXTS, PAIRS))
        assert status == 400 and "classifies single texts" in answer["error"]

        # Regression: score.
        expected = infer(activities, run_id="scores-run", texts=TEXTS, text_pairs=PAIRS)
        status, answer = await call("/v2/models/scores-run/infer", oip_body(TEXTS, PAIRS))
        assert status == 200, answer
        (score,) = answer["outputs"]
        assert (score["name"], score["datatype"], score["shape"]) == ("score", "FP32", [7])
        assert score["data"] == pytest.approx([p["score"] for p in expected.predictions], abs=1e-5)

        # Multi-label: scores [n, L], the labels in the output's parameters.
        expected = infer(activities, run_id="genres-run", texts=TEXTS)
        status, answer = await call("/v2/models/genres-run/infer", oip_body(TEXTS))
        assert status == 200, answer
        (scores,) = answer["outputs"]
        assert (scores["name"], scores["shape"]) == ("scores", [len(TEXTS), len(GENRES)])
        assert scores["parameters"]["labels"] == GENRES
        flat = [p["scores"][name] for p in expected.predictions for name in GENRES]
        assert scores["data"] == pytest.approx(flat, abs=1e-5)

        # Token classification: entities, a JSON list per text.
        expected = infer(activities, run_id="tagger-run", texts=IRREGULAR_TEXTS)
        status, answer = await call("/v2/models/tagger-run/infer", oip_body(IRREGULAR_TEXTS))
        assert status == 200, answer
        (found,) = answer["outputs"]
        assert (found["name"], found["datatype"]) == ("entities", "BYTES")
        decoded = [json.loads(item) for item in found["data"]]
        for entities_of_text, p in zip(decoded, expected.predictions, strict=True):
            assert [
                {k: e[k] for k in ("label", "start", "end", "text")} for e in entities_of_text
            ] == [{k: e[k] for k in ("label", "start", "end", "text")} for e in p["entities"]]

        # Metadata names each task's outputs.
        status, meta = await call("/v2/models/tagger-run")
        assert status == 200
        assert meta["parameters"]["task"] == TOKEN_CLASSIFICATION
        assert [o["name"] for o in meta["outputs"]] == ["entities"]
        status, meta = await call("/v2/models/genres-run")
        assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("scores", [-1, -1])]
    finally:
        await endpoint.stop()


def test_the_commit_keeps_pairs_and_the_sweep_for_the_export(tmp_path: Path) -> None:
    """What a trial's commit writes for its export after the commit: its check texts with
    their second texts, and its sweep (``runs`` shows ``none``: only the best is exported)."""
    from datasets import Dataset

    from services.trainer.training.data import PreparedData
    from services.trainer.training.fine_tune import _exporter
    from shared.onnx_export import read_check_sample
    from shared.types import BertFineTuneConfig, BertFineTuneRequest, RunContext

    rows = Dataset.from_dict({"text": TEXTS, "text_pair": PAIRS, "labels": [0] * len(TEXTS)})
    data = PreparedData(rows, None, SENTIMENTS, "made-up", has_pairs=True)
    config = BertFineTuneConfig(train_file="made-up.csv", text_pair_column="second")
    request = BertFineTuneRequest(
        run_id="trial-run", config=config, export_at_commit=False,
        context=RunContext(kind="sweep", name="a-sweep", trial_index=3),
    )  # fmt: skip
    _exporter(data, request)(tmp_path)
    sample = read_check_sample(tmp_path)
    assert sample is not None
    assert (sample.texts, sample.text_pairs, sample.sweep) == (TEXTS, PAIRS, "a-sweep")
    experiment = request.model_copy(update={"context": RunContext(kind="experiment", name="e")})
    single = PreparedData(rows.remove_columns("text_pair"), None, SENTIMENTS, "made-up")
    _exporter(single, experiment)(tmp_path)
    sample = read_check_sample(tmp_path)
    assert sample is not None and (sample.text_pairs, sample.sweep) == (None, None)


# ---- through Temporal: plain JSON, the temporal CLI, recorded histories ----------------

HISTORIES = Path(__file__).parents[1] / "histories"
# Recorded by the test below: a request with text_pairs (its size check counts them, behind
# the patch inference-payload-counts-pairs) and a tagger's request.
TASK_HISTORIES = ("replay-infer-pairs", "replay-infer-tokens")


async def test_tasks_through_the_workflow_with_plain_json(
    client: Any, activities: InferenceActivities, runs_root: Path
) -> None:
    import os

    from temporalio.client import WorkflowFailureError
    from temporalio.worker import Replayer

    from services.inferencer.workflows import BertInferenceWorkflow
    from shared.converter import data_converter
    from shared.types import INFERENCE_WORKFLOW
    from tests.conftest import run_temporal_cli, running_workers

    async with running_workers(client, runs_root, trainer=False) as queues:
        pairs = await client.execute_workflow(
            INFERENCE_WORKFLOW,
            {"run_id": "scores-run", "texts": TEXTS, "text_pairs": PAIRS},
            id=TASK_HISTORIES[0],
            task_queue=queues.inference,
        )
        assert pairs["task"] == REGRESSION and pairs["labels"] == []
        assert [set(p) for p in pairs["predictions"]] == [{"score"}] * len(TEXTS)
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                INFERENCE_WORKFLOW,
                {"run_id": "scores-run", "texts": TEXTS},
                id=f"{TASK_HISTORIES[0]}-missing",
                task_queue=queues.inference,
            )
        # The temporal CLI, plain JSON in and out.
        answer = await run_temporal_cli(
            client.service_client.config.target_host,
            "workflow",
            "execute",
            "--type",
            INFERENCE_WORKFLOW,
            "--task-queue",
            queues.inference,
            "--workflow-id",
            TASK_HISTORIES[1],
            "--input",
            json.dumps({"run_id": "tagger-run", "texts": IRREGULAR_TEXTS[:3]}),
        )
        tagged = answer["result"]
        assert tagged["task"] == TOKEN_CLASSIFICATION
        assert_contract_shape(TOKEN_CLASSIFICATION, IRREGULAR_TEXTS[:3], tagged["predictions"])

    replayer = Replayer(workflows=[BertInferenceWorkflow], data_converter=data_converter)
    for workflow_id in TASK_HISTORIES:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        await replayer.replay_workflow(history)
        path = HISTORIES / f"{workflow_id}.json"
        if os.environ.get("RECORD_HISTORIES") and not path.exists():
            path.write_text(history.to_json(), encoding="utf-8")
