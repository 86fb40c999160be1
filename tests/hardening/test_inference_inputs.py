"""Every bad inference request, through a real server and one shared inferencer worker.

Also: the same cases through ``bert-finetune predict``, raw JSON through the ``temporal``
CLI, and the oversized-but-valid requests that must still be answered.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from safetensors import safe_open
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from bert_finetune import client_ops
from shared.onnx_export import EXPORT_DIR
from shared.runs import RUN_MANIFEST
from shared.types import INFERENCE_WORKFLOW, BertInferenceRequest, BertInferenceResult
from tests.conftest import SentimentData, running_workers
from tests.hardening.artefacts import Artefacts
from tests.hardening.cases import (
    CASES_BY_ID,
    CORRUPT_RUN_ID,
    INCOMPLETE_RUN_ID,
    INDEX_OUT_RUN_ID,
    LINKS_OUT_RUN_ID,
    SYMLINK_RUN_ID,
    Case,
    Context,
    RawJSON,
    cases,
)
from tests.hardening.conftest import TrainedRun, copy_run
from tests.hardening.support import (
    check_cli_failure,
    check_outcome,
    cli_env,
    expect_failure,
    first_application_error,
    gather_limited,
    one_case_per_area,
    run_cli,
    run_cli_in_process,
    snapshot,
)
from tests.helpers.binaries import temporal_cli

GOOD_RUN_ID = "good-run"


@dataclass(frozen=True)
class InferEnv:
    client: Client
    queues: object
    runs_root: Path
    context: Context
    cli_env: dict


@pytest_asyncio.fixture(scope="module")
async def infer_env(
    temporal_env: WorkflowEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    artefacts: Artefacts,
    trained_run: TrainedRun,
) -> AsyncIterator[InferEnv]:
    runs_root = tmp_path_factory.mktemp("hardening_infer") / "bert_runs"
    runs_root.mkdir()
    copy_run(trained_run.run_dir, runs_root, GOOD_RUN_ID)
    (copy_run(trained_run.run_dir, runs_root, INCOMPLETE_RUN_ID) / RUN_MANIFEST).unlink()
    corrupt = copy_run(trained_run.run_dir, runs_root, CORRUPT_RUN_ID)
    (corrupt / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 64)
    # Damage what ONNX Runtime would serve too, so either backend meets a corrupt run.
    for graph in (corrupt / EXPORT_DIR).glob("*.onnx"):
        graph.write_bytes(b"\x00not an onnx graph" * 64)
    # A complete, loadable run outside the root: only the containment check stops it.
    stolen = copy_run(trained_run.run_dir, artefacts.outside.parent, "stolen-run")
    (runs_root / SYMLINK_RUN_ID).symlink_to(stolen, target_is_directory=True)
    _runs_naming_files_outside(runs_root, trained_run, artefacts.outside.parent)
    client = temporal_env.client
    async with running_workers(client, runs_root) as queues:
        yield InferEnv(
            client=client,
            queues=queues,
            runs_root=runs_root,
            context=Context(tiny_model, sentiment_csv, artefacts, good_run_id=GOOD_RUN_ID),
            cli_env=cli_env(
                client.service_client.config.target_host,
                queues.training,
                queues.inference,
                runs_root,
            ),
        )


def _runs_naming_files_outside(runs_root: Path, trained_run: TrainedRun, elsewhere: Path) -> None:
    """Complete runs that would serve files from outside their folder: the ONNX export's
    tokenizer is a link out, or (no export: PyTorch serves) a sharded checkpoint's index
    names weights elsewhere. Both still load without the folder check."""
    linked = copy_run(trained_run.run_dir, runs_root, LINKS_OUT_RUN_ID)
    tokenizer = linked / EXPORT_DIR / "tokenizer.json"
    outside_tokenizer = elsewhere / "links-out-tokenizer.json"
    tokenizer.replace(outside_tokenizer)
    tokenizer.symlink_to(outside_tokenizer)

    indexed = copy_run(trained_run.run_dir, runs_root, INDEX_OUT_RUN_ID)
    shutil.rmtree(indexed / EXPORT_DIR)
    shard = elsewhere / "index-points-out.safetensors"
    (indexed / "model.safetensors").replace(shard)
    with safe_open(str(shard), "pt") as weights:
        names = list(weights.keys())
    (indexed / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, str(shard))}),
        encoding="utf-8",
    )


@pytest.mark.parametrize("case", cases("predict"), ids=lambda c: c.id)
async def test_bad_inference_request_fails_fast_and_clearly(
    infer_env: InferEnv, case: Case
) -> None:
    before = snapshot(infer_env.runs_root)
    outcome = await expect_failure(
        infer_env.client,
        INFERENCE_WORKFLOW,
        infer_env.queues.inference,
        case.build(infer_env.context),
    )
    check_outcome(case, outcome)
    assert snapshot(infer_env.runs_root) == before


def _predict_args(case: Case, context: Context) -> list[str]:
    request = case.build(context)
    model = request["run_id"] if request.get("run_id") is not None else f"@{request['alias']}"
    args = ["predict", model, *request["texts"]]
    for option in ("max_seq_length", "batch_size"):
        if option in request:
            args += [f"--{option.replace('_', '-')}", str(request[option])]
    for pair in request.get("text_pairs") or []:
        args += ["--pair", pair]
    return args


async def test_bad_inference_request_through_the_cli(infer_env: InferEnv) -> None:
    for case in [c for c in cases("predict") if c.cli]:
        result = await run_cli_in_process(_predict_args(case, infer_env.context), infer_env.cli_env)
        check_cli_failure(case, result)


async def test_bad_inference_request_through_the_cli_process(
    infer_env: InferEnv, tmp_path: Path
) -> None:
    sample = one_case_per_area([c for c in cases("predict") if c.cli])
    commands = [
        run_cli(_predict_args(case, infer_env.context), infer_env.cli_env, tmp_path)
        for case in sample
    ]
    for case, result in zip(sample, await gather_limited(commands, limit=4), strict=True):
        check_cli_failure(case, result)
        assert result.returncode == 1


@pytest.mark.parametrize(
    "case_id",
    [
        "train-invalid-json",
        "train-unknown-run-field",
        "epochs-zero",
        "name-traversal",
        "predict-invalid-json",
        "predict-run-id-traversal",
        "predict-empty-texts",
    ],
)
async def test_raw_json_through_the_temporal_cli(infer_env: InferEnv, case_id: str) -> None:
    """``temporal workflow execute --input ...``: the workflow fails, it is not left RUNNING.

    The temporal CLI itself refuses input that is not JSON (nothing is started); bytes like
    that sent through the API are covered by the table above.
    """
    case = CASES_BY_ID[case_id]
    value = case.build(infer_env.context)
    raw = isinstance(value, RawJSON)
    is_train = case.workflow == "train"
    workflow_id = f"temporal-cli-{case_id}-{uuid.uuid4()}"
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        "workflow",
        "execute",
        "--address",
        infer_env.cli_env["TEMPORAL_ADDRESS"],
        "--type",
        "BertFineTuningWorkflow" if is_train else INFERENCE_WORKFLOW,
        "--task-queue",
        infer_env.queues.training if is_train else infer_env.queues.inference,
        "--workflow-id",
        workflow_id,
        "--input",
        value if raw else json.dumps(value),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    text = output.decode()
    assert process.returncode != 0, text
    if raw:
        assert "not valid JSON" in text, text
        with pytest.raises(RPCError):
            await infer_env.client.get_workflow_handle(workflow_id).describe()
        return
    assert "FAILED" in text, text
    for fragment in case.expect:
        assert fragment in text, f"{fragment!r} not in {text}"
    handle = infer_env.client.get_workflow_handle(workflow_id)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    error = first_application_error(failed.value)
    assert error is not None and error.type == case.error_type and error.non_retryable


async def test_worker_still_serves_and_truncates_a_long_text(infer_env: InferEnv) -> None:
    """After the whole table the same worker answers; a text far past max_seq_length is
    truncated, not refused."""
    texts = ["a great movie " * 5000, "an awful boring film"]
    result = await infer_env.client.execute_workflow(
        INFERENCE_WORKFLOW,
        BertInferenceRequest(run_id=GOOD_RUN_ID, texts=texts, max_seq_length=32),
        id=f"long-text-{uuid.uuid4()}",
        task_queue=infer_env.queues.inference,
        result_type=BertInferenceResult,
    )
    assert result.label_names == ["positive", "negative"]
    assert result.texts == texts


async def test_requests_over_the_payload_limit_are_chunked_by_the_client(
    infer_env: InferEnv,
) -> None:
    """The workflow refuses results over ~1 MiB (see the table); ``predict`` splits them."""
    texts = [("so good " if i % 2 else "so bad ") * 2000 for i in range(100)]
    assert sum(len(t.encode()) for t in texts) > 1024 * 1024
    result = await client_ops.predict(
        infer_env.client, GOOD_RUN_ID, texts, infer_env.queues.inference, max_seq_length=16
    )
    assert len(result.labels) == len(texts)
    assert result.label_names == ["positive" if i % 2 else "negative" for i in range(100)]
