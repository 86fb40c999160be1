"""A real Prometheus scraping real worker processes through a tiny fine-tune, inferences
and promotions.

Package-scoped: the stack starts once, the scenario runs once, and every test in the package
reads what it left behind (Prometheus data, worker logs, live endpoints).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from shared.types import (
    FINE_TUNING_WORKFLOW,
    INFERENCE_WORKFLOW,
    PROMOTE_WORKFLOW,
    BertExperimentInput,
    BertExperimentOutput,
    BertInferenceRequest,
    BertInferenceResult,
    BertPromoteInput,
    BertPromoteOutput,
)
from tests.conftest import SentimentData, tiny_config
from tests.helpers.binaries import prometheus
from tests.helpers.ports import free_port
from tests.helpers.processes import WorkerProcess
from tests.helpers.prometheus import prometheus_get

NAMESPACE = "bert-obs"  # what a ServiceMonitor's target labels would say in Kubernetes
SCRAPE_INTERVAL_SECONDS = 1
STARTUP_TIMEOUT_SECONDS = 120


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


@dataclass
class ObservedStack:
    prometheus_url: str
    trainer: WorkerProcess
    inferencer: WorkerProcess
    controller: WorkerProcess
    training_queue: str
    inference_queue: str
    # The controller's own training queue (see ``observed``).
    control_queue: str
    started_at: float
    # The inferencer's Open Inference Protocol endpoint.
    http_url: str = ""
    run_id: str = ""
    failed_run_id: str = ""
    finished_at: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def query(self, expr: str) -> list[dict]:
        return prometheus_get(self.prometheus_url, "/api/v1/query", {"query": expr})["result"]

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else float("nan")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_prometheus_config(path: Path, workers: list[WorkerProcess]) -> None:
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
            "scrape_timeout": f"{SCRAPE_INTERVAL_SECONDS}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
        },
        # Job names and target labels as the chart's ServiceMonitor produces them
        # (jobLabel app.kubernetes.io/component; namespace and pod from discovery).
        "scrape_configs": [
            {
                "job_name": worker.role,
                "static_configs": [
                    {
                        "targets": [worker.target],
                        "labels": {"namespace": NAMESPACE, "pod": f"{worker.role}-0"},
                    }
                ],
            }
            for worker in workers
        ],
    }
    path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="package")
def prometheus_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[list[WorkerProcess]], str]]:
    binary = prometheus()
    root = tmp_path_factory.mktemp("prometheus")
    processes: list[subprocess.Popen[bytes]] = []

    def start(workers: list[WorkerProcess]) -> str:
        config = root / "prometheus.yml"
        write_prometheus_config(config, workers)
        port = free_port()
        log = (root / "prometheus.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert processes[-1].poll() is None, (root / "prometheus.log").read_text()[-3000:]
            try:
                return http_get(f"{url}/-/ready", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, 60, "Prometheus did not become ready")
        return url

    yield start
    for process in processes:
        stop(process)


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def observed(
    temporal_env: WorkflowEnvironment,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    prometheus_server: Callable[[list[WorkerProcess]], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ObservedStack]:
    client: Client = temporal_env.client
    root = tmp_path_factory.mktemp("observed")
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": client.namespace,
        "BERT_RUNS_DIR": str(root / "runs"),
        "BERT_TRAINING_TASK_QUEUE": f"obs-train-{suffix}",
        "BERT_INFERENCE_TASK_QUEUE": f"obs-infer-{suffix}",
        "METRICS_BIND_ADDRESS": "127.0.0.1",
        "LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started_at = time.time()
    trainer = WorkerProcess.with_env("trainer", env, root / "trainer.log")
    # DEBUG so the per-batch ``inference.batch`` events are emitted too; the HTTP endpoint
    # on, so its panels have data.
    http_port = free_port()
    inferencer = WorkerProcess.with_env(
        "inferencer",
        {
            **env,
            "LOG_LEVEL": "DEBUG",
            "BERT_HTTP_PORT": str(http_port),
            "BERT_HTTP_BIND_ADDRESS": "127.0.0.1",
            "BERT_HTTP_BATCH_WINDOW_MS": "50",
        },
        root / "inferencer.log",
    )
    # In a cluster the controller shares the trainers' queue and takes whichever workflow
    # tasks it polls first; here it polls a queue of its own, so the promotions sent there
    # are certainly its work and its dashboard's panels certainly have data.
    control_queue = f"obs-control-{suffix}"
    controller = WorkerProcess.with_env(
        "controller", {**env, "BERT_TRAINING_TASK_QUEUE": control_queue}, root / "controller.log"
    )
    workers = [trainer, inferencer, controller]
    try:
        url = prometheus_server(workers)
        stack = ObservedStack(
            prometheus_url=url,
            trainer=trainer,
            inferencer=inferencer,
            controller=controller,
            training_queue=env["BERT_TRAINING_TASK_QUEUE"],
            inference_queue=env["BERT_INFERENCE_TASK_QUEUE"],
            control_queue=control_queue,
            started_at=started_at,
            http_url=f"http://127.0.0.1:{http_port}",
        )
        for worker in workers:

            def ready(worker: WorkerProcess = worker) -> bool:
                worker.assert_running()
                try:
                    return http_get(f"{worker.base_url}/readyz", timeout=1)[0] == 200
                except OSError:
                    return False

            wait_until(ready, STARTUP_TIMEOUT_SECONDS, f"{worker.role} never became ready")
        stack.timings["workers_ready_s"] = time.time() - started_at
        # A few scrapes of the idle workers first: every counter's baseline is 0.
        wait_until(
            lambda: (
                stack.scalar("min(count_over_time(up[1m]))") >= 3 and stack.scalar("min(up)") == 1
            ),
            60,
            "Prometheus is not scraping every worker",
        )
        await run_scenario(stack, client, tiny_model, sentiment_csv)
        # Let the final state be scraped, and a few points after it for the rate windows.
        wait_until(
            lambda: (
                stack.scalar('sum(bert_inference_requests_total{outcome="RunNotFound"})') >= 1
                and stack.scalar("sum(bert_training_runs_succeeded_total)") >= 1
                and stack.scalar('sum(bert_training_runs_failed_total{error_type="DatasetError"})')
                >= 1
                and stack.scalar(
                    f'sum(temporal_workflow_failed{{task_queue="{stack.control_queue}"}})'
                )
                >= 1
            ),
            30,
            "Prometheus never scraped the scenario's final counters",
        )
        time.sleep(3 * SCRAPE_INTERVAL_SECONDS)
        stack.finished_at = time.time()
        yield stack
    finally:
        for worker in workers:
            worker.terminate()


def failure_types(error: BaseException | None) -> list[str]:
    """The ``type`` of every ApplicationError in a Temporal failure's cause chain."""
    types = []
    while error is not None:
        if isinstance(error, ApplicationError) and error.type:
            types.append(error.type)
        error = getattr(error, "cause", None) or error.__cause__
    return types


async def run_scenario(
    stack: ObservedStack, client: Client, tiny_model: Path, data: SentimentData
) -> None:
    """One successful fine-tune, one failing one, several inferences and a failing one."""
    started = time.time()
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "obs",
            "runs": [tiny_config(tiny_model, data, num_epochs=8, checkpoint_steps=40)],
        }
    )
    output = await client.execute_workflow(
        FINE_TUNING_WORKFLOW,
        experiment,
        id=f"obs-train-{uuid.uuid4()}",
        task_queue=stack.training_queue,
        result_type=BertExperimentOutput,
    )
    stack.run_id = output.runs[0].run_id
    stack.timings["training_s"] = time.time() - started

    broken = BertExperimentInput.model_validate(
        {
            "experiment_name": "obs-broken",
            "runs": [tiny_config(tiny_model, data, label_column="no_such_column")],
        }
    )
    stack.failed_run_id = broken.run_ids()[0]
    with pytest.raises(WorkflowFailureError):
        await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            broken,
            id=f"obs-broken-{uuid.uuid4()}",
            task_queue=stack.training_queue,
        )

    started = time.time()
    texts = ["the movie was great fun", "it was awful and boring", "so wonderful", "very bad"]
    # 4 to 144 texts: small requests run as local activities, larger ones (over 32 texts) as
    # regular activities, so both call shapes' metrics have data.
    for round_ in range(6):
        count = len(texts) * (round_ + 1) ** 2
        result = await client.execute_workflow(
            INFERENCE_WORKFLOW,
            BertInferenceRequest(
                run_id=stack.run_id, texts=texts * (round_ + 1) ** 2, batch_size=8
            ),
            id=f"obs-infer-{uuid.uuid4()}",
            task_queue=stack.inference_queue,
            result_type=BertInferenceResult,
        )
        assert len(result.labels) == count
        if round_ in (0, 2):
            # The SDK creates its latency histograms at their first observation (round 0 the
            # local activity's, round 2 the activity's); let that first sample be scraped so
            # the later requests show up as an increase (rate()).
            await asyncio.sleep(3 * SCRAPE_INTERVAL_SECONDS)
    with pytest.raises(WorkflowFailureError) as failed:
        await client.execute_workflow(
            INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id="obs-run-0-no_such_model", texts=["hello"]),
            id=f"obs-infer-missing-{uuid.uuid4()}",
            task_queue=stack.inference_queue,
        )
    assert "RunNotFound" in failure_types(failed.value)
    await asyncio.to_thread(http_scenario, stack, texts)
    stack.timings["inference_s"] = time.time() - started
    await promotion_scenario(stack, client)


async def promotion_scenario(stack: ObservedStack, client: Client) -> None:
    """Promotions on the controller's queue, spread over scrapes, and one refused."""
    for round_ in range(4):
        promoted = await client.execute_workflow(
            PROMOTE_WORKFLOW,
            BertPromoteInput(run_id=stack.run_id, alias="obs-live"),
            id=f"obs-promote-{uuid.uuid4()}",
            task_queue=stack.control_queue,
            result_type=BertPromoteOutput,
        )
        assert promoted.run_id == stack.run_id
        # The SDK creates its histograms at their first observation: let that first sample
        # be scraped so the later promotions show up as an increase, as for inference.
        await asyncio.sleep((3 if round_ == 0 else 1) * SCRAPE_INTERVAL_SECONDS)
    with pytest.raises(WorkflowFailureError) as refused:
        await client.execute_workflow(
            PROMOTE_WORKFLOW,
            BertPromoteInput(run_id="obs-run-0-no_such_model", alias="obs-live"),
            id=f"obs-promote-missing-{uuid.uuid4()}",
            task_queue=stack.control_queue,
        )
    assert "RunNotFound" in failure_types(refused.value)


def http_post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (loopback)
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def http_scenario(stack: ObservedStack, texts: list[str]) -> None:
    """Rounds of concurrent HTTP infer requests (batched together), a 404 and a 400."""
    from concurrent.futures import ThreadPoolExecutor

    def body(batch: list[str]) -> bytes:
        tensor = {"name": "text", "datatype": "BYTES", "shape": [len(batch)], "data": batch}
        return json.dumps({"inputs": [tensor]}).encode()

    infer = f"{stack.http_url}/v2/models/{stack.run_id}/infer"
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            codes = list(pool.map(lambda i: http_post(infer, body(texts[: i + 1])), range(4)))
            assert codes == [200] * 4, codes
            time.sleep(SCRAPE_INTERVAL_SECONDS)
    assert http_post(f"{stack.http_url}/v2/models/obs-no-such-run/infer", body(texts)) == 404
    assert http_post(infer, b"{not json") == 400
