"""Safe rollouts through a real Temporal server and real workers (docs/inference.md, "Rollouts").

Runs are copies of one tiny run trained for real (the session's ``trained_run``): ``run-good``
as trained, ``run-same`` (the same model: every gate rule can be checked exactly on it),
``run-flipped`` (its two labels swapped: the same label set, every answer inverted, so far
worse on the held-out file) and ``run-upper`` (upper-cased labels: not comparable). Gates run
on a controller and an inferencer only: no trainer. Canary shares are checked over hundreds
of requests against a tolerance of six standard deviations (a false failure about once in
five hundred million runs); nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Replayer

from bert_finetune import client_ops
from services.inferencer.activities import InferenceActivities
from services.inferencer.http_server import HttpEndpoint
from services.inferencer.model_cache import ModelCache
from services.inferencer.shadow import ShadowScorer
from services.inferencer.worker import build_inferencer_worker
from services.inferencer.workflows import BertInferenceWorkflow
from services.trainer.registry import TRAINER_WORKFLOWS
from services.trainer.worker import build_trainer_worker
from shared import aliases
from shared.converter import data_converter
from shared.settings import HttpSettings
from shared.types import (
    INFERENCE_WORKFLOW,
    PROMOTE_WORKFLOW,
    BertInferenceRequest,
    BertInferenceResult,
    BertPromoteInput,
    BertPromoteOutput,
)
from tests.conftest import TEST_LOCAL_PATH_ROOTS, Queues, SentimentData, running_workers
from tests.hardening.conftest import TrainedRun, copy_run, trained_run  # noqa: F401
from tests.test_cli import cli
from tests.tiny import sentiment_rows

HISTORIES = Path(__file__).parent / "histories"
TEXTS = [text for text, _ in sentiment_rows(6, seed=41)]
SHADOW_DEADLINE_SECONDS = 120


def _relabel(run_dir: Path, rename: dict[str, str]) -> None:
    """Rename the model's labels (config.json and the ONNX export) as ``rename`` says."""
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["id2label"] = {k: rename[v] for k, v in config["id2label"].items()}
    config["label2id"] = {rename[k]: v for k, v in config["label2id"].items()}
    config_path.write_text(json.dumps(config), encoding="utf-8")
    export_path = run_dir / "onnx" / "export.json"
    export = json.loads(export_path.read_text(encoding="utf-8"))
    export["label_names"] = [rename[name] for name in export["label_names"]]
    export_path.write_text(json.dumps(export), encoding="utf-8")


@pytest.fixture
def runs(trained_run: TrainedRun, runs_root: Path) -> dict[str, str]:  # noqa: F811
    made = {
        name: copy_run(trained_run.run_dir, runs_root, f"run-{name}").name
        for name in ("good", "same", "flipped", "upper")
    }
    _relabel(runs_root / made["flipped"], {"positive": "negative", "negative": "positive"})
    _relabel(runs_root / made["upper"], {"positive": "POSITIVE", "negative": "NEGATIVE"})
    record = runs_root / made["upper"] / "run.json"
    data = json.loads(record.read_text(encoding="utf-8"))
    data["label_names"] = [name.upper() for name in data["label_names"]]
    data["result"]["label_names"] = data["label_names"]
    record.write_text(json.dumps(data), encoding="utf-8")
    return made


@asynccontextmanager
async def controller_and_inferencer(client: Client, runs_root: Path) -> AsyncIterator[Queues]:
    """What a gated promotion needs: a controller (no training) and an inferencer."""
    queues = Queues(f"control-{uuid.uuid4()}", f"infer-{uuid.uuid4()}")
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(
            build_trainer_worker(
                client,
                task_queue=queues.training,
                runs_root=runs_root,
                no_remote_activities=True,
                graceful_shutdown=timedelta(seconds=5),
                inference_task_queue=queues.inference,
            )
        )
        await stack.enter_async_context(
            build_inferencer_worker(
                client,
                task_queue=queues.inference,
                runs_root=runs_root,
                local_path_roots=TEST_LOCAL_PATH_ROOTS,
            )
        )
        yield queues


async def promote(client: Client, queue: str, **fields: Any) -> BertPromoteOutput:
    return await client.execute_workflow(
        PROMOTE_WORKFLOW,
        BertPromoteInput.model_validate(fields),
        id=f"promote-{uuid.uuid4()}",
        task_queue=queue,
        result_type=BertPromoteOutput,
        execution_timeout=timedelta(minutes=5),
    )


async def refused(client: Client, queue: str, **fields: Any) -> str:
    with pytest.raises(WorkflowFailureError) as err:
        await promote(client, queue, **fields)
    return client_ops.failure_message(err.value)


async def infer(client: Client, queue: str, **fields: Any) -> BertInferenceResult:
    return await client.execute_workflow(
        INFERENCE_WORKFLOW,
        BertInferenceRequest(texts=TEXTS, **fields),
        id=f"infer-{uuid.uuid4()}",
        task_queue=queue,
        result_type=BertInferenceResult,
    )


def gate(sentiment_csv: SentimentData, metric: str = "eval_accuracy", **extra: Any) -> dict:
    return {"metric": metric, "data_file": str(sentiment_csv.validation), **extra}


def within_six_sigma(hits: int, total: int, share: float) -> bool:
    return abs(hits - total * share) <= 6 * math.sqrt(total * share * (1 - share))


# ---- gates -------------------------------------------------------------------------------


async def test_a_refused_gate_leaves_the_alias_and_its_answers_unchanged(
    client: Client, runs_root: Path, runs: dict[str, str], sentiment_csv: SentimentData
) -> None:
    async with controller_and_inferencer(client, runs_root) as queues:
        await promote(client, queues.training, run_id=runs["good"], alias="prod")
        pointer = aliases.pointer_path(runs_root, "prod").read_bytes()
        before = await infer(client, queues.inference, alias="prod")

        message = await refused(
            client,
            queues.training,
            run_id=runs["flipped"],
            alias="prod",
            gate=gate(sentiment_csv),
        )
        assert message.startswith("[PromotionRefused] promotion of run 'run-flipped'")
        assert "eval_accuracy" in message and "for the current run 'run-good' on 40 rows" in message
        # The same model, required to be better by 0.01: refused, with equal scores.
        message = await refused(
            client,
            queues.training,
            run_id=runs["same"],
            alias="prod",
            gate=gate(sentiment_csv, min_delta=0.01),
        )
        scores = [float(word) for word in message.split() if word.replace(".", "").isdigit()]
        assert "[PromotionRefused]" in message and scores[0] == scores[1]
        # A canary behind a failing gate is refused too.
        message = await refused(
            client,
            queues.training,
            run_id=runs["flipped"],
            alias="prod",
            gate=gate(sentiment_csv),
            canary_percent=10,
        )
        assert "[PromotionRefused]" in message

        assert aliases.pointer_path(runs_root, "prod").read_bytes() == pointer
        after = await infer(client, queues.inference, alias="prod")
        assert (after.run_id, after.label_names) == (runs["good"], before.label_names)


async def test_a_passed_gate_moves_the_alias_and_a_new_alias_always_passes(
    client: Client, runs_root: Path, runs: dict[str, str], sentiment_csv: SentimentData
) -> None:
    async with controller_and_inferencer(client, runs_root) as queues:
        created = await promote(
            client, queues.training, run_id=runs["flipped"], alias="prod", gate=gate(sentiment_csv)
        )
        assert created.run_id == runs["flipped"] and created.gate is not None
        assert created.gate.skipped == "a new alias always passes its gate"

        moved = await promote(
            client, queues.training, run_id=runs["good"], alias="prod", gate=gate(sentiment_csv)
        )
        assert (moved.run_id, moved.previous_run_id) == (runs["good"], runs["flipped"])
        assert moved.gate is not None and moved.gate.rows == 40
        assert moved.gate.candidate_score is not None and moved.gate.current_score is not None
        assert moved.gate.candidate_score > moved.gate.current_score
        assert moved.gate.current_run_id == runs["flipped"]
        # An equal model passes with min_delta 0 (candidate >= current).
        same = await promote(
            client, queues.training, run_id=runs["same"], alias="prod", gate=gate(sentiment_csv)
        )
        assert same.run_id == runs["same"] and same.gate is not None
        assert same.gate.candidate_score == same.gate.current_score
        assert (await infer(client, queues.inference, alias="prod")).run_id == runs["same"]


async def test_a_gate_no_inferencer_picks_up_is_refused_and_the_alias_stays(
    client: Client, runs_root: Path, runs: dict[str, str], sentiment_csv: SentimentData
) -> None:
    # A controller whose inference queue nobody polls (the inferencers are down or scaled to
    # zero): the gated promotion ends refused after the queue timeout, never stays RUNNING.
    control = f"control-{uuid.uuid4()}"
    async with build_trainer_worker(
        client,
        task_queue=control,
        runs_root=runs_root,
        no_remote_activities=True,
        graceful_shutdown=timedelta(seconds=5),
        inference_task_queue=f"nobody-{uuid.uuid4()}",
        gate_queue_timeout=timedelta(seconds=2),
    ):
        await promote(client, control, run_id=runs["good"], alias="prod")
        pointer = aliases.pointer_path(runs_root, "prod").read_bytes()
        message = await refused(
            client, control, run_id=runs["same"], alias="prod", gate=gate(sentiment_csv)
        )
    assert message.startswith("[PromotionRefused] the gate was not evaluated: no inferencer")
    assert "within 2 s; 'prod' still points at run-good" in message
    assert "bert-finetune worker inferencer" in message
    assert aliases.pointer_path(runs_root, "prod").read_bytes() == pointer


async def test_gates_that_cannot_compare_are_invalid_config(
    client: Client,
    runs_root: Path,
    runs: dict[str, str],
    sentiment_csv: SentimentData,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outside = Path("/proc/self/held_out.csv")  # outside every allowed root
    async with controller_and_inferencer(client, runs_root) as queues:
        await promote(client, queues.training, run_id=runs["good"], alias="prod")
        pointer = aliases.pointer_path(runs_root, "prod").read_bytes()
        cases = [
            ({"run_id": runs["upper"], "gate": gate(sentiment_csv)}, "labels"),
            (
                {"run_id": runs["same"], "gate": gate(sentiment_csv, metric="eval_mse")},
                "gate.metric: 'eval_mse' is not a metric of task single_label_classification",
            ),
            (
                {
                    "run_id": runs["same"],
                    "gate": {"metric": "eval_accuracy", "data_file": str(outside)},
                },
                "is outside the folders the inferencer's gate may read",
            ),
            ({"run_id": runs["upper"], "canary_percent": 5}, "canary_percent: run 'run-upper'"),
        ]
        for fields, expected in cases:
            message = await refused(client, queues.training, alias="prod", **fields)
            assert message.startswith("[InvalidConfig]") and expected in message, message
        bad_rows = tmp_path_factory.mktemp("gate") / "held_out.csv"
        bad_rows.write_text("sentence,label\ngood film,maybe\n", encoding="utf-8")
        message = await refused(
            client,
            queues.training,
            alias="prod",
            run_id=runs["same"],
            gate={"metric": "eval_accuracy", "data_file": str(bad_rows)},
        )
        assert message.startswith("[DatasetError]") and "row 0: label 'maybe'" in message
        assert aliases.pointer_path(runs_root, "prod").read_bytes() == pointer


# ---- canaries ----------------------------------------------------------------------------


async def test_a_canary_answers_its_share_of_workflows_and_says_which_run_answered(
    client: Client, runs_root: Path, runs: dict[str, str]
) -> None:
    total, share = 120, 0.5
    async with running_workers(client, runs_root) as queues:
        await promote(client, queues.training, run_id=runs["good"], alias="prod")
        expected = {
            runs["good"]: (await infer(client, queues.inference, run_id=runs["good"])).label_names,
            runs["flipped"]: (
                await infer(client, queues.inference, run_id=runs["flipped"])
            ).label_names,
        }
        assert expected[runs["good"]] != expected[runs["flipped"]]
        canary = await promote(
            client, queues.training, run_id=runs["flipped"], alias="prod", canary_percent=50
        )
        assert (canary.run_id, canary.canary_run_id, canary.canary_percent) == (
            runs["good"],
            runs["flipped"],
            50,
        )
        answered: list[str] = []
        for _ in range(total // 20):
            results = await asyncio.gather(
                *(infer(client, queues.inference, alias="prod") for _ in range(20))
            )
            for result in results:
                # One workflow, one run: its labels are that run's.
                assert result.label_names == expected[result.run_id]
                answered.append(result.run_id)
        assert set(answered) == {runs["good"], runs["flipped"]}
        assert within_six_sigma(answered.count(runs["flipped"]), total, share), answered
        # A `predict` split over several workflows draws once: one run answers every chunk.
        texts = [("so good " if i % 2 else "so bad ") * 2000 for i in range(60)]
        requests = client_ops.inference_requests("@prod", texts, max_seq_length=16)
        assert len(requests) > 1
        whole = await client_ops.run_inference(client, requests, queues.inference)
        # The two runs disagree on every text: a mix of runs would match neither.
        one_run = client_ops.inference_requests(whole.run_id, texts, max_seq_length=16)
        pinned = await client_ops.run_inference(client, one_run, queues.inference)
        assert whole.label_names == pinned.label_names
        # A request's own draw pins the run that answers.
        low = await infer(client, queues.inference, alias="prod", route_draw=0.0)
        high = await infer(client, queues.inference, alias="prod", route_draw=0.99)
        assert (low.run_id, high.run_id) == (runs["flipped"], runs["good"])

        # Rollback: the alias's run answers everything again; nothing left to roll back.
        rolled = await promote(client, queues.training, alias="prod", rollback=True)
        assert (rolled.run_id, rolled.canary_run_id, rolled.canary_percent) == (
            runs["good"],
            None,
            None,
        )
        again = await infer(client, queues.inference, alias="prod", route_draw=0.0)
        assert again.run_id == runs["good"]
        message = await refused(client, queues.training, alias="prod", rollback=True)
        assert message.startswith("[InvalidConfig] rollback: alias 'prod' has no canary")


async def test_promoting_the_canary_again_completes_the_rollout_without_a_gate(
    client: Client, runs_root: Path, runs: dict[str, str], sentiment_csv: SentimentData
) -> None:
    async with controller_and_inferencer(client, runs_root) as queues:
        await promote(client, queues.training, run_id=runs["good"], alias="prod")
        await promote(
            client, queues.training, run_id=runs["flipped"], alias="prod", canary_percent=20
        )
        # Another candidate replaces the canary.
        replaced = await promote(
            client, queues.training, run_id=runs["same"], alias="prod", canary_percent=30
        )
        assert (replaced.canary_run_id, replaced.canary_percent) == (runs["same"], 30)
        # Completing it: the gate is not run again (a min_delta no equal model could meet).
        done = await promote(
            client,
            queues.training,
            run_id=runs["same"],
            alias="prod",
            gate=gate(sentiment_csv, min_delta=0.5),
        )
        assert (done.run_id, done.previous_run_id, done.canary_run_id) == (
            runs["same"],
            runs["good"],
            None,
        )
        assert done.gate is not None and done.gate.skipped is not None
        assert "completes the rollout" in done.gate.skipped
        pointer = aliases.read_pointer(runs_root, "prod")
        assert pointer is not None and (pointer.version, pointer.canary_run_id) == (1, None)


async def test_http_canary_share_and_model_version(runs_root: Path, runs: dict[str, str]) -> None:
    """Every HTTP request draws once: over 400 requests the canary's share is within six
    standard deviations of 25%, and ``model_version`` names the run that answered."""
    total, share = 400, 0.25
    aliases.promote(runs_root, runs["good"], "prod")
    aliases.apply_rollout(
        runs_root, BertPromoteInput(run_id=runs["flipped"], alias="prod", canary_percent=25)
    )
    settings = HttpSettings(port=0, bind_address="127.0.0.1")
    endpoint = HttpEndpoint(settings, runs_root, ModelCache(4))
    await endpoint.start()
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": TEXTS[:1]}]}
    ).encode()

    def post(path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{endpoint.port}{path}",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def get(path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}{path}", timeout=60) as r:
            return json.loads(r.read())

    try:
        labels = {}
        for run_id in (runs["good"], runs["flipped"]):
            answer = await asyncio.to_thread(post, f"/v2/models/{run_id}/infer")
            labels[run_id] = answer["outputs"][0]["data"]
        versions = []
        for _ in range(total):
            answer = await asyncio.to_thread(post, "/v2/models/@prod/infer")
            assert answer["model_name"] == "@prod"
            assert answer["outputs"][0]["data"] == labels[answer["model_version"]]
            versions.append(answer["model_version"])
        assert within_six_sigma(versions.count(runs["flipped"]), total, share)
        pinned = await asyncio.to_thread(post, f"/v2/models/@prod/versions/{runs['flipped']}/infer")
        assert pinned["model_version"] == runs["flipped"]
        metadata = await asyncio.to_thread(get, "/v2/models/@prod")
        assert metadata["versions"] == [runs["good"], runs["flipped"]]
    finally:
        await endpoint.stop()


# ---- shadows -----------------------------------------------------------------------------


def _shadow_counts(task: str = "single_label_classification") -> tuple[float, float]:
    compared = REGISTRY.get_sample_value("bert_inference_shadow_compared_total", {"task": task})
    agreed = REGISTRY.get_sample_value("bert_inference_shadow_agreed_total", {"task": task})
    return compared or 0.0, agreed or 0.0


async def _until(condition: Any, what: str) -> None:
    for _ in range(SHADOW_DEADLINE_SECONDS * 10):
        if condition():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{what} did not happen within {SHADOW_DEADLINE_SECONDS} s")


async def test_a_shadow_never_changes_answers_and_its_agreement_is_counted(
    client: Client, runs_root: Path, runs: dict[str, str]
) -> None:
    async with running_workers(client, runs_root) as queues:
        await promote(client, queues.training, run_id=runs["good"], alias="prod")
        plain = await infer(client, queues.inference, alias="prod")

        # An identical shadow agrees on every text; a flipped one on none.
        for shadow_run, agreeing in ((runs["same"], len(TEXTS)), (runs["flipped"], 0)):
            shadowed = await promote(
                client, queues.training, run_id=shadow_run, alias="prod", shadow=True
            )
            assert (shadowed.run_id, shadowed.shadow_run_id) == (runs["good"], shadow_run)
            compared, agreed = _shadow_counts()
            answer = await infer(client, queues.inference, alias="prod")
            assert answer.model_dump() == plain.model_dump()
            await _until(
                lambda compared=compared: _shadow_counts()[0] >= compared + len(TEXTS),
                "the shadow's comparison",
            )
            assert _shadow_counts() == (compared + len(TEXTS), agreed + agreeing)
        rolled = await promote(client, queues.training, alias="prod", rollback=True)
        assert rolled.shadow_run_id is None


def test_the_answer_never_waits_for_the_shadow(runs_root: Path, runs: dict[str, str]) -> None:
    """The shadow's model load is held until the answer is back: the answer cannot have
    waited for it (no timing involved)."""
    aliases.promote(runs_root, runs["good"], "prod")
    aliases.apply_rollout(
        runs_root, BertPromoteInput(run_id=runs["flipped"], alias="prod", shadow=True)
    )
    cache = ModelCache(4)
    release = threading.Event()

    class HeldCache(ModelCache):
        def get(self, run_dir: Path, device: str) -> Any:
            assert release.wait(SHADOW_DEADLINE_SECONDS)
            return cache.get(run_dir, device)

    shadow = ShadowScorer(runs_root, HeldCache(1))
    activities = InferenceActivities(runs_root, cache, shadow)
    compared, agreed = _shadow_counts()
    answer = activities.run_bert_inference(BertInferenceRequest(alias="prod", texts=TEXTS))
    assert answer.run_id == runs["good"]
    assert _shadow_counts() == (compared, agreed)  # not scored yet: its load is held
    release.set()
    assert shadow.wait_idle(SHADOW_DEADLINE_SECONDS)
    assert _shadow_counts() == (compared + len(TEXTS), agreed)  # flipped: no agreement


async def test_http_answers_are_the_same_with_a_shadow_which_is_scored_after(
    runs_root: Path, runs: dict[str, str]
) -> None:
    aliases.promote(runs_root, runs["good"], "prod")
    settings = HttpSettings(port=0, bind_address="127.0.0.1")
    endpoint = HttpEndpoint(settings, runs_root, ModelCache(4))
    await endpoint.start()
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
    ).encode()

    def post() -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{endpoint.port}/v2/models/@prod/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    try:
        plain = await asyncio.to_thread(post)
        aliases.apply_rollout(
            runs_root, BertPromoteInput(run_id=runs["flipped"], alias="prod", shadow=True)
        )
        compared, agreed = _shadow_counts()
        shadowed = await asyncio.to_thread(post)
        assert shadowed == plain  # same run, same outputs: nothing of the shadow's
        await _until(
            lambda: _shadow_counts()[0] >= compared + len(TEXTS), "the HTTP shadow's comparison"
        )
        assert _shadow_counts() == (compared + len(TEXTS), agreed)  # flipped: never agrees
    finally:
        await endpoint.stop()


# ---- the CLI, runs, and replay -----------------------------------------------------------


async def test_the_cli_rolls_out_and_runs_shows_it(
    client: Client, runs_root: Path, runs: dict[str, str], sentiment_csv: SentimentData
) -> None:
    async with running_workers(client, runs_root) as queues:
        code, out, err = await cli(client, queues, runs_root, "promote", runs["good"], "prod")
        assert code == 0, err
        code, out, err = await cli(
            client, queues, runs_root, "promote", runs["same"], "prod", "--canary", "10"
        )
        assert code == 0, err
        assert "canary run run-same answers 10% of its requests" in out
        code, out, err = await cli(client, queues, runs_root, "runs")
        assert code == 0, err
        assert "@prod canary 10%" in out
        code, out, err = await cli(client, queues, runs_root, "runs", "--json")
        listed = {row["run_id"]: row for row in json.loads(out)}
        assert listed[runs["same"]]["canary_of"] == [{"alias": "prod", "percent": 10}]
        assert listed[runs["good"]]["aliases"] == ["prod"]
        code, out, err = await cli(
            client,
            queues,
            runs_root,
            "promote",
            runs["flipped"],
            "prod",
            "--gate-metric",
            "eval_accuracy",
            "--gate-data",
            str(sentiment_csv.validation),
        )
        assert code == 1 and err.startswith("error: [PromotionRefused]"), err
        code, out, err = await cli(client, queues, runs_root, "promote", "prod", "--rollback")
        assert code == 0, err
        assert "Alias prod serves run run-good alone again" in out
        code, out, err = await cli(
            client, queues, runs_root, "promote", runs["same"], "prod", "--canary", "5", "--shadow"
        )
        assert code == 2 and "not allowed with argument" in err


async def test_rollout_histories_replay(
    client: Client, runs_root: Path, runs: dict[str, str], sentiment_csv: SentimentData
) -> None:
    """A gated canary promotion and an inference by alias that drew for its canary replay;
    record them with RECORD_HISTORIES=1 (tests/test_replay.py replays recorded ones)."""
    replayer = Replayer(
        workflows=[*TRAINER_WORKFLOWS, BertInferenceWorkflow], data_converter=data_converter
    )
    async with running_workers(client, runs_root) as queues:
        await promote(client, queues.training, run_id=runs["good"], alias="prod")
        handles = {
            "replay-promote-rollout": await client.start_workflow(
                PROMOTE_WORKFLOW,
                {
                    "run_id": runs["same"],
                    "alias": "prod",
                    "canary_percent": 50,
                    "gate": gate(sentiment_csv),
                },
                id=f"replay-promote-rollout-{uuid.uuid4()}",
                task_queue=queues.training,
            )
        }
        await handles["replay-promote-rollout"].result()
        handles["replay-infer-canary"] = await client.start_workflow(
            INFERENCE_WORKFLOW,
            {"alias": "prod", "texts": TEXTS},
            id=f"replay-infer-canary-{uuid.uuid4()}",
            task_queue=queues.inference,
        )
        await handles["replay-infer-canary"].result()
        for name, handle in handles.items():
            history = await handle.fetch_history()
            await replayer.replay_workflow(history)
            path = HISTORIES / f"{name}.json"
            if os.environ.get("RECORD_HISTORIES") and not path.exists():
                path.write_text(history.to_json(), encoding="utf-8")
