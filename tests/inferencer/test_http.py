"""The inferencer's Open Inference Protocol v2 endpoint, against a real inferencer worker.

One ``bert-finetune worker inferencer`` process (the production entry point) with
``BERT_HTTP_PORT`` serves the session's trained tiny run, by run id and by ``@alias``.
NVIDIA's ``tritonclient[http]`` (a client nobody here wrote) talks to it with its defaults
(binary tensors), and raw HTTP (urllib, as curl would) checks every error code. The worker
also polls a Temporal task queue, so the same run is asked through ``BertInferenceWorkflow``
and the answers compared.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from tritonclient.utils import InferenceServerException

from shared.aliases import promote
from shared.onnx_export import EXPORT_DIR
from shared.types import INFERENCE_WORKFLOW, BertInferenceRequest, BertInferenceResult
from tests.hardening.conftest import TrainedRun, copy_run
from tests.helpers.ports import free_port
from tests.helpers.processes import WorkerProcess
from tests.tiny import sentiment_rows

TEXTS = [text for text, _ in sentiment_rows(8, seed=31)]
RUN_ID = "http-run-0-tiny"
MAX_TEXTS = 16
MAX_BYTES = 64 * 1024
MAX_IN_FLIGHT = 4
# Long enough that concurrent test requests reliably meet in one batch.
BATCH_WINDOW_MS = 100


@dataclass(frozen=True)
class HttpWorker:
    worker: WorkerProcess
    port: int
    task_queue: str
    runs_root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=body, headers=headers or {}, method="GET" if body is None else "POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (loopback)
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def infer_body(texts: list[str], **extra: object) -> bytes:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def error_of(status: int, body: bytes, expected: int) -> str:
    """The one-line ``{"error": ...}`` of a refused request."""
    assert status == expected, body
    assert body.count(b"\n") == 0 and set(json.loads(body)) == {"error"}, body
    return json.loads(body)["error"]


def wait_until_ready(url: str, worker: WorkerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        worker.assert_running()
        try:
            if http(url)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def served(
    temporal_env: WorkflowEnvironment,
    trained_run: TrainedRun,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HttpWorker]:
    root = tmp_path_factory.mktemp("http")
    runs_root = root / "runs"
    runs_root.mkdir()
    copy_run(trained_run.run_dir, runs_root, RUN_ID)
    promote(runs_root, RUN_ID, "prod")
    # A run whose weights are damaged and that has no export: it cannot be loaded.
    broken = copy_run(trained_run.run_dir, runs_root, "http-broken")
    shutil.rmtree(broken / EXPORT_DIR, ignore_errors=True)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    port = free_port()
    queue = f"http-{uuid.uuid4()}"
    worker = WorkerProcess(
        temporal_env.client.service_client.config.target_host,
        queue,
        runs_root,
        root / "inferencer.log",
        role="inferencer",
        extra_env={
            "BERT_HTTP_PORT": str(port),
            "BERT_HTTP_BIND_ADDRESS": "127.0.0.1",
            "BERT_HTTP_MAX_TEXTS": str(MAX_TEXTS),
            "BERT_HTTP_MAX_REQUEST_BYTES": str(MAX_BYTES),
            "BERT_HTTP_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
            "BERT_HTTP_BATCH_WINDOW_MS": str(BATCH_WINDOW_MS),
        },
    )
    try:
        served = HttpWorker(worker, port, queue, runs_root)
        wait_until_ready(f"{served.url}/v2/health/ready", worker)
        yield served
    finally:
        worker.stop()


def triton_infer(
    address: str, model: str, texts: list[str], **options: object
) -> triton.InferResult:
    client = triton.InferenceServerClient(address, network_timeout=60)
    try:
        text = triton.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array(texts, dtype=object))
        return client.infer(model, [text], **options)
    finally:
        client.close()


async def workflow_answer(client: Client, queue: str, run: str) -> tuple[str, BertInferenceResult]:
    workflow_id = f"http-compare-{uuid.uuid4()}"
    result = await client.execute_workflow(
        INFERENCE_WORKFLOW,
        BertInferenceRequest(run_id=run, texts=TEXTS),
        id=workflow_id,
        task_queue=queue,
        result_type=BertInferenceResult,
    )
    return workflow_id, result


def test_tritonclient_talks_to_the_endpoint(served: HttpWorker) -> None:
    client = triton.InferenceServerClient(served.address, network_timeout=60)
    try:
        assert client.is_server_live() and client.is_server_ready()
        metadata = client.get_model_metadata("@prod")
        assert metadata["name"] == "@prod" and metadata["versions"] == [RUN_ID]
        assert metadata["platform"] == "onnxruntime"  # the trained run has its export
        assert metadata["parameters"]["labels"] == ["negative", "positive"]
        assert [o["name"] for o in metadata["outputs"]] == ["label", "score"]
        # A model is ready once loaded here; asking starts the load.
        deadline = time.monotonic() + 60
        while not client.is_model_ready("@prod"):
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.2)
        assert client.is_model_ready(RUN_ID)
    finally:
        client.close()

    # tritonclient's defaults: binary input tensors, all outputs as binary data.
    by_alias = triton_infer(served.address, "@prod", TEXTS)
    response = by_alias.get_response()
    assert response["model_name"] == "@prod" and response["model_version"] == RUN_ID
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    labels = [label.decode() for label in by_alias.as_numpy("label")]
    scores = by_alias.as_numpy("score")
    assert set(labels) <= {"negative", "positive"} and scores.dtype == np.float32
    assert scores.shape == (len(TEXTS),) and ((scores >= 0.5) & (scores <= 1)).all()

    # JSON tensors of shape [n, 1], JSON outputs, a gzip body, the request id echoed.
    client = triton.InferenceServerClient(served.address, network_timeout=60)
    try:
        text = triton.InferInput("text", [len(TEXTS), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t] for t in TEXTS], dtype=object), binary_data=False)
        by_id = client.infer(
            RUN_ID,
            [text],
            outputs=[triton.InferRequestedOutput("label", binary_data=False)],
            request_id="req-1",
            request_compression_algorithm="gzip",
        )
    finally:
        client.close()
    assert by_id.get_response()["id"] == "req-1"
    assert [o["name"] for o in by_id.get_response()["outputs"]] == ["label"]
    # (tritonclient gives JSON BYTES as str, binary ones as bytes.)
    assert list(by_id.as_numpy("label")) == labels

    with pytest.raises(InferenceServerException) as unknown:
        triton_infer(served.address, "@no-such-alias", TEXTS)
    assert "does not exist" in str(unknown.value)


async def test_same_labels_as_the_workflow_from_the_same_cache(
    served: HttpWorker, client: Client
) -> None:
    """The HTTP answer equals BertInferenceWorkflow's for the same run and texts; a model
    loaded by HTTP is warm for the workflow (one cache): its small request is a local
    activity."""
    status, _, body = await asyncio.to_thread(
        http, f"{served.url}/v2/models/%40prod/infer", infer_body(TEXTS)
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["model_version"] == RUN_ID
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [len(TEXTS)]
    assert outputs["score"]["datatype"] == "FP32"

    workflow_id, result = await workflow_answer(client, served.task_queue, RUN_ID)
    assert outputs["label"]["data"] == result.label_names
    assert outputs["score"]["data"] == pytest.approx(result.confidences, abs=1e-5)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    events = {event.event_type for event in history.events}
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in events
    assert EventType.EVENT_TYPE_MARKER_RECORDED in events


def test_concurrent_requests_are_batched_and_answered_in_order(served: HttpWorker) -> None:
    singles = {}
    for text in TEXTS:
        status, _, body = http(f"{served.url}/v2/models/{RUN_ID}/infer", infer_body([text]))
        assert status == 200, body
        singles[text] = json.loads(body)["outputs"][0]["data"][0]
    before = batch_requests_sum(served)

    requests = [TEXTS[i : i + 2] for i in range(0, len(TEXTS), 2)]  # MAX_IN_FLIGHT requests
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(
            pool.map(
                lambda texts: http(f"{served.url}/v2/models/@prod/infer", infer_body(texts)),
                requests,
            )
        )
    for texts, (status, _, body) in zip(requests, answers, strict=True):
        assert status == 200, body
        assert json.loads(body)["outputs"][0]["data"] == [singles[t] for t in texts]
    # Fewer batches than requests: some were classified together.
    batches = batch_count(served) - before[1]
    assert 1 <= batches < len(requests), batches
    assert batch_requests_sum(served)[0] - before[0] == len(requests)


def scrape(served: HttpWorker) -> dict[str, float]:
    status, _, body = http(f"{served.worker.base_url}/metrics")
    assert status == 200
    values = {}
    for line in body.decode().splitlines():
        if line.startswith("bert_inference_http_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def batch_requests_sum(served: HttpWorker) -> tuple[float, float]:
    values = scrape(served)
    return (
        values.get("bert_inference_http_batch_requests_sum", 0.0),
        values.get("bert_inference_http_batch_requests_count", 0.0),
    )


def batch_count(served: HttpWorker) -> float:
    return batch_requests_sum(served)[1]


def test_errors_are_one_line_with_the_right_codes(served: HttpWorker) -> None:
    infer = f"{served.url}/v2/models/{RUN_ID}/infer"
    # Unknown models: a run id, an alias (either spelling), a version that is not the run.
    for url in (
        f"{served.url}/v2/models/no-such-run/infer",
        f"{served.url}/v2/models/@no-such-alias/infer",
        f"{served.url}/v2/models/%40no-such-alias/infer",
        f"{served.url}/v2/models/@prod/versions/another-run/infer",
    ):
        error_of(*http(url, infer_body(TEXTS))[::2], 404)
    assert "does not exist" in error_of(*http(f"{served.url}/v2/models/nope")[::2], 404)
    error_of(*http(f"{served.url}/v2/models/nope/ready")[::2], 404)
    error_of(*http(f"{served.url}/v2/nothing-here")[::2], 404)
    # The version form answers for the run serving the alias.
    ok = http(f"{served.url}/v2/models/@prod/versions/{RUN_ID}/infer", infer_body(TEXTS))
    assert ok[0] == 200, ok[2]

    # Bad requests.
    bad = {
        "not JSON": b"{nope",
        "no inputs": json.dumps({"inputs": []}).encode(),
        "wrong datatype": json.dumps(
            {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
        ).encode(),
        "shape mismatch": json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}
        ).encode(),
        "not strings": json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]}
        ).encode(),
        "unknown input": json.dumps(
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
        ).encode(),
        "unknown output": infer_body(["a"], outputs=[{"name": "logits"}]),
        "bad max_seq_length": infer_body(["a"], parameters={"max_seq_length": 4096}),
        "text_pair on a single-text run": json.dumps(
            {
                "inputs": [
                    {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]},
                    {"name": "text_pair", "datatype": "BYTES", "shape": [1], "data": ["b"]},
                ]
            }
        ).encode(),
    }
    for what, body in bad.items():
        status, _, answer = http(infer, body)
        assert status == 400, (what, answer)
        error_of(status, answer, 400)
    binary_header = http(infer, b'{"inputs": []}', {"Inference-Header-Content-Length": "999"})
    error_of(*binary_header[::2], 400)

    # Too large: texts, then bytes.
    too_many = error_of(*http(infer, infer_body(["x"] * (MAX_TEXTS + 1)))[::2], 413)
    assert f"limit of {MAX_TEXTS}" in too_many
    error_of(*http(infer, infer_body(["x" * MAX_BYTES]))[::2], 413)

    # A run that cannot be loaded.
    assert "http-broken" in error_of(
        *http(f"{served.url}/v2/models/http-broken/infer", infer_body(["a"]))[::2], 500
    )


def test_over_the_in_flight_limit_is_answered_503(served: HttpWorker) -> None:
    """Requests still sending their bodies hold their slots: the next one is refused."""
    held = []
    try:
        for _ in range(MAX_IN_FLIGHT):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            sock.sendall(
                f"POST /v2/models/{RUN_ID}/infer HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
            )
            held.append(sock)
        deadline = time.monotonic() + 10
        while True:
            status, _, body = http(f"{served.url}/v2/models/{RUN_ID}/infer", infer_body(["a"]))
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "overloaded" in error_of(status, body, 503)
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while http(f"{served.url}/v2/models/{RUN_ID}/infer", infer_body(["a"]))[0] != 200:
        assert time.monotonic() < deadline, "the endpoint did not recover"
        time.sleep(0.1)


def test_http_metrics_on_the_workers_metrics_endpoint(served: HttpWorker) -> None:
    http(f"{served.url}/v2/models/{RUN_ID}/infer", infer_body(TEXTS))
    values = scrape(served)
    assert values['bert_inference_http_requests_total{code="200",route="infer"}'] >= 1
    assert values["bert_inference_http_request_duration_seconds_count"] >= 1
    assert values["bert_inference_http_batch_texts_count"] >= 1
    assert "bert_inference_http_in_flight_requests" in values
