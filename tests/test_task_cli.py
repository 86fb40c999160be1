"""The CLI with every task (issue 22): `predict` prints each task readably and takes pairs
(``--pair``, ``--pair-file``); `runs` keeps run ids whole in 80 columns and says ``none``
for a sweep's trials; a sweep's "best:" line is printed once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from temporalio.client import Client

from bert_finetune import client_ops
from bert_finetune.cli import main as cli_main
from bert_finetune.run_views import runs_table
from shared.aliases import apply_rollout, promote
from shared.onnx_export import export_onnx, write_check_texts
from shared.runs import write_record
from shared.sweep_types import SweepProgress, SweepTrialProgress
from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION
from shared.types import BertInferenceResult, BertPromoteInput
from tests.conftest import running_workers
from tests.helpers.runs import sample_record
from tests.inferencer.task_models import GENRES, TAGS, build_task_model
from tests.test_cli import cli

LONG_IDS = [
    "tweet-sentiment-run-0-sentence-transformers_all-MiniLM-L6-v2",
    "stsb-similarity-sweep-run-12-google_bert_uncased_L-2_H-128_A-2",
    "wnut-entities-run-0-sentence-transformers_all-MiniLM-L6-v2",
]


def rendered(renderable: Any, width: int = 100) -> str:
    console = Console(width=width, record=True)
    console.print(renderable)
    return console.export_text()


def result(task: str, texts: list[str], predictions: list[dict[str, Any]]) -> BertInferenceResult:
    single = task == SINGLE_LABEL
    return BertInferenceResult(
        run_id="the-run",
        texts=texts,
        labels=[p["label_id"] for p in predictions] if single else [],
        label_names=[p["label"] for p in predictions] if single else [],
        confidences=[p["score"] for p in predictions] if single else [],
        task=task,
        predictions=predictions,
    )


def test_predict_prints_each_task_readably() -> None:
    single = rendered(
        client_ops.predictions_table(
            result(SINGLE_LABEL, ["great"], [{"label": "positive", "label_id": 1, "score": 0.93}])
        )
    )
    assert "label" in single and "positive" in single and "0.930" in single

    multi = rendered(
        client_ops.predictions_table(
            result(
                MULTI_LABEL,
                ["a match report", "nothing"],
                [
                    {"labels": ["news", "sports"], "scores": {"news": 0.61, "sports": 0.97}},
                    {"labels": [], "scores": {"news": 0.2, "sports": 0.41}},
                ],
            )
        )
    )
    assert "news 0.610, sports 0.970" in multi
    assert "none (most probable: sports 0.410)" in multi
    assert "multi_label_classification" in multi

    scores = rendered(
        client_ops.predictions_table(
            result(REGRESSION, ["a cat sat", "a dog ran"], [{"score": 3.25}, {"score": -0.5}]),
            text_pairs=["a cat was sitting", "stocks fell"],
        )
    )
    assert "text pair" in scores and "a cat was sitting" in scores
    assert "3.2500" in scores and "-0.5000" in scores

    text = "John  Smith lives in\tNew York"
    entities = [
        {"label": "PER", "start": 0, "end": 11, "text": "John  Smith", "score": 0.91},
        {"label": "LOC", "start": 21, "end": 29, "text": "New York", "score": 0.88},
    ]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]
    tagged = rendered(
        client_ops.predictions_table(
            result(
                TOKEN_CLASSIFICATION,
                [text, "nothing here"],
                [{"tags": tags, "entities": entities}, {"tags": ["O", "O"], "entities": []}],
            )  # fmt: skip
        )
    )
    assert "PER 'John  Smith' [0:11] 0.910" in tagged
    assert "LOC 'New York' [21:29] 0.880" in tagged
    assert "entities" in tagged


def test_predict_requests_carry_pairs_and_are_sized_for_the_task() -> None:
    texts = [f"text number {i} " + "word " * 30 for i in range(3000)]
    pairs = [f"pair {i}" for i in range(3000)]
    requests = client_ops.inference_requests("a-run", texts, pairs, max_seq_length=64)
    assert len(requests[0].texts) == client_ops.FIRST_CHUNK_TEXTS
    assert [t for r in requests for t in r.texts] == texts
    assert [p for r in requests for p in r.text_pairs or []] == pairs
    for request in requests:
        size = client_ops.inference_payload_bytes(request.texts, request.text_pairs, per_word=True)
        assert size <= client_ops.PREDICT_CHUNK_BYTES
    with pytest.raises(client_ops.UserError, match="2 second texts .* for 3 texts"):
        client_ops.inference_requests("a-run", texts[:3], pairs[:2])

    # After the first answer, the rest are cut for the task: a multi-label run's
    # probabilities per label make more, smaller requests than single labels.
    first = result(
        MULTI_LABEL, texts[:1], [{"labels": [], "scores": {f"l{i}": 0.1 for i in range(60)}}]
    )
    multi = client_ops._sized_for(first, requests[1:])
    single = client_ops._sized_for(
        result(SINGLE_LABEL, texts[:1], [{"label": "a", "label_id": 0, "score": 0.9}]),
        requests[1:],
    )
    assert [t for r in multi for t in r.texts] == texts[client_ops.FIRST_CHUNK_TEXTS :]
    assert [p for r in multi for p in r.text_pairs or []] == pairs[client_ops.FIRST_CHUNK_TEXTS :]
    assert len(multi) > len(single)
    labels = list(first.predictions[0]["scores"])
    for request in multi:
        size = client_ops.inference_payload_bytes(request.texts, request.text_pairs, labels=labels)
        assert size <= client_ops.PREDICT_CHUNK_BYTES


@pytest.fixture
def listed_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BERT_RUNS_DIR", str(tmp_path))
    for run_id, task, labels in (
        (LONG_IDS[0], SINGLE_LABEL, ["negative", "positive"]),
        (LONG_IDS[1], REGRESSION, []),
        (LONG_IDS[2], TOKEN_CLASSIFICATION, TAGS),
    ):
        record = sample_record(run_id, labels, task=task)
        metrics = {"eval_loss": 0.25, "eval_f1_macro": 0.86, "eval_mse": 0.41, "eval_f1": 0.8}
        record = record.model_copy(
            update={"result": record.result.model_copy(update={"eval_metrics": metrics})}
        )
        (tmp_path / run_id).mkdir()
        write_record(tmp_path / run_id, record)
    # A sweep's trial: its commit kept check texts, but only the sweep's best is exported.
    write_check_texts(tmp_path / LONG_IDS[1], ["a"], ["b"], sweep="stsb-similarity-sweep")
    promote(tmp_path, LONG_IDS[0], "production")
    # A canary is listed next to its run, in the aliases column.
    apply_rollout(
        tmp_path, BertPromoteInput(run_id=LONG_IDS[2], alias="production", canary_percent=10)
    )
    return tmp_path


@pytest.mark.parametrize("width", [80, 100, 140, 220])
def test_runs_keep_ids_whole_at_any_width(listed_runs: Path, width: int) -> None:
    console = Console(width=width, record=True)
    runs_table(listed_runs, False, console)
    out = console.export_text()
    for line in out.splitlines():
        assert len(line.rstrip()) <= width, line
    for run_id in LONG_IDS:
        assert run_id in out, (width, out)
    assert "…" not in out
    assert "entity F1" in out or width < 140  # the task's main metric, named
    if width >= 220:  # everything fits: one table, every column
        header = next(line for line in out.splitlines() if "run_id" in line)
        assert [cell.strip() for cell in header.split("┃")[1:-1]] == [
            "run_id", "state", "task", "epochs", "metric", "acc", "loss", "labels", "aliases",
            "export",
        ]  # fmt: skip
        assert "LOC, ORG, PER" in out  # a tagger's entity types, not its tags
        assert "@production canary 10%" in out


def test_a_sweep_trial_never_exported_is_none_not_pending(
    listed_runs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bert_finetune.cli.console", Console(width=300))  # no squeezed cells
    write_check_texts(listed_runs / LONG_IDS[2], ["a text"])  # an experiment's run
    assert cli_main(["runs", "--json"]) == 0
    states = {run["run_id"]: run["export"] for run in json.loads(capsys.readouterr().out)}
    assert states == {LONG_IDS[0]: "none", LONG_IDS[1]: "none", LONG_IDS[2]: "pending"}
    assert cli_main(["runs", "show", LONG_IDS[1]]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "a trial of sweep stsb-similarity-sweep: only the sweep's best trial is exported" in (
        shown
    )
    assert "regression" in shown


def test_a_finished_sweep_names_its_best_once() -> None:
    trial = SweepTrialProgress(trial_index=0, run_id="s-run-0-m", state="succeeded", params={})
    progress = SweepProgress(
        sweep_name="s",
        metric="eval_accuracy",
        num_trials=1,
        trials=[trial],
        best_run_id="s-run-0-m",
    )
    assert "best: s-run-0-m" in rendered(client_ops.sweep_table(progress))
    assert "best:" not in rendered(client_ops.sweep_table(progress, caption=False))


# ---- through Temporal, as a user runs it ---------------------------------------------


async def test_predict_pairs_and_entities_through_the_cli(
    client: Client, runs_root: Path, tmp_path: Path
) -> None:
    tagger = build_task_model(tmp_path / "tagger", TOKEN_CLASSIFICATION)
    export_onnx(tagger)
    shutil.copytree(tagger, runs_root / "tagger-run")
    record = sample_record("tagger-run", TAGS, task=TOKEN_CLASSIFICATION)
    write_record(runs_root / "tagger-run", record)
    genres = build_task_model(tmp_path / "genres", MULTI_LABEL)  # served by PyTorch
    shutil.copytree(genres, runs_root / "genres-run")
    record = sample_record("genres-run", GENRES, task=MULTI_LABEL, text_pair_column="second")
    write_record(runs_root / "genres-run", record)

    texts = tmp_path / "texts.txt"
    texts.write_text("john smith lives in\tnew  york\n\nmary works at acme corp\n", "utf-8")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a first pair\n\nthe second pair\n", encoding="utf-8")
    async with running_workers(client, runs_root, trainer=False) as queues:
        code, out, err = await cli(
            client, queues, runs_root, "predict", "tagger-run", "--file", str(texts), "--json"
        )
        assert code == 0, err
        answer = json.loads(out)
        assert answer["task"] == TOKEN_CLASSIFICATION and answer["labels"] == []
        for text, prediction in zip(answer["texts"], answer["predictions"], strict=True):
            assert len(prediction["tags"]) == len(text.split())
            for entity in prediction["entities"]:
                assert text[entity["start"] : entity["end"]] == entity["text"]
        code, out, err = await cli(
            client, queues, runs_root, "predict", "tagger-run", "--file", str(texts)
        )
        assert code == 0, err
        assert "entities" in out and "token_classification" in out

        code, out, err = await cli(
            client,
            queues,
            runs_root,
            "predict",
            "genres-run",
            "a match report",
            "--pair",
            "sports news",
            "--file",
            str(texts),
            "--pair-file",
            str(pairs),
        )
        assert code == 0, err
        assert "text pair" in out and "sports news" in out and "the second pair" in out
        assert "labels" in out

        # A pair run without pairs: one line, the fix named.
        code, out, err = await cli(client, queues, runs_root, "predict", "genres-run", "x")
        assert code == 1 and out == ""
        assert "[InvalidConfig] text_pairs: run 'genres-run' was trained on text pairs" in err
        code, out, err = await cli(
            client, queues, runs_root, "predict", "genres-run", "x", "y", "--pair", "z"
        )
        assert code == 1 and "1 --pair for 2 TEXT arguments" in err
