"""Smoke test of a deployed release: both workers ready, then one tiny fine-tune and one inference.

For users with a cluster (run after `make k8s-up`, or against any release of the chart); it is
not run in CI. It uses the Kubernetes API to wait for the Deployments, `kubectl port-forward`
to reach the Temporal frontend unless --temporal-address is given, and the Temporal SDK to run
the workflows with the same JSON the CLI would send.

    .venv/bin/python k8s-dev/smoke.py --context kind-bert-finetune --namespace bert

The model is the 4.4M-parameter google/bert_uncased_L-2_H-128_A-2 on 256 SST-2 sentences, so
the trainer pod needs Hugging Face Hub access; a CPU trainer finishes in a couple of minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

from kubernetes import client, config
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

MODEL = "google/bert_uncased_L-2_H-128_A-2"
TEXTS = ["a gripping, beautifully shot film", "dull, lifeless and far too long"]


def say(message: str) -> None:
    print(message, flush=True)  # noqa: T201 (a terminal script)


def sanitize(model_name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in model_name)


def wait_for_deployments(
    apps: client.AppsV1Api, namespace: str, release: str, timeout: float
) -> None:
    """Wait until the trainer and inferencer Deployments of the release have all replicas ready."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/name=bert-finetune"
    deadline = time.monotonic() + timeout
    while True:
        deployments = apps.list_namespaced_deployment(namespace, label_selector=selector).items
        by_component = {
            d.metadata.labels.get("app.kubernetes.io/component"): d for d in deployments
        }
        pending = []
        for component in ("trainer", "inferencer"):
            deployment = by_component.get(component)
            if deployment is None:
                pending.append(f"{component}: no Deployment")
                continue
            want = deployment.spec.replicas or 0
            ready = deployment.status.ready_replicas or 0
            if want == 0 or ready < want:
                pending.append(f"{deployment.metadata.name}: {ready}/{want} ready")
        if not pending:
            say(f"workers ready: {', '.join(sorted(by_component))}")
            return
        if time.monotonic() > deadline:
            raise TimeoutError("workers not ready: " + "; ".join(pending))
        say("waiting: " + "; ".join(pending))
        time.sleep(5)


def temporal_address_from_release(core: client.CoreV1Api, namespace: str, release: str) -> str:
    """The TEMPORAL_ADDRESS the chart gave the workers (its env ConfigMap)."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/name=bert-finetune"
    for config_map in core.list_namespaced_config_map(namespace, label_selector=selector).items:
        if config_map.data and "TEMPORAL_ADDRESS" in config_map.data:
            return config_map.data["TEMPORAL_ADDRESS"]
    raise LookupError(f"no bert-finetune env ConfigMap for release {release} in {namespace}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def port_forward(context: str | None, namespace: str, service: str, port: int) -> Iterator[str]:
    """Forward a local port to a Service with kubectl; yields the local host:port."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found: install it or pass --temporal-address")
    local = free_port()
    command = [kubectl, "-n", namespace, "port-forward", f"svc/{service}", f"{local}:{port}"]
    if context:
        command[1:1] = ["--context", context]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"kubectl port-forward failed: {error.strip()}")
            time.sleep(0.3)
        yield f"127.0.0.1:{local}"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def run_workflows(address: str, args: argparse.Namespace) -> None:
    temporal = await Client.connect(
        address, namespace=args.temporal_namespace, data_converter=pydantic_data_converter
    )
    experiment = f"smoke-{uuid.uuid4().hex[:8]}"
    experiment_input = {
        "experiment_name": experiment,
        "runs": [
            {
                "model_name": MODEL,
                "num_epochs": 1,
                "batch_size": 32,
                "max_train_samples": 256,
                "max_eval_samples": 128,
                "use_gpu": args.gpu,
            }
        ],
    }
    say(f"fine-tuning {MODEL} (workflow {experiment}) ...")
    trained = await temporal.execute_workflow(
        "BertFineTuningWorkflow",
        experiment_input,
        id=experiment,
        task_queue=args.training_task_queue,
        execution_timeout=timedelta(seconds=args.timeout),
    )
    run = trained["runs"][0]
    say(json.dumps({k: run[k] for k in ("run_id", "train_loss", "eval_accuracy")}, indent=2))
    expected_run_id = f"{experiment}-run-0-{sanitize(MODEL)}"
    if run["run_id"] != expected_run_id:
        raise AssertionError(f"run_id {run['run_id']!r}, expected {expected_run_id!r}")

    say("classifying with the new run ...")
    predicted = await temporal.execute_workflow(
        "BertInferenceWorkflow",
        {"run_id": run["run_id"], "texts": TEXTS},
        id=f"{experiment}-predict",
        task_queue=args.inference_task_queue,
        execution_timeout=timedelta(seconds=args.timeout),
    )
    for text, label, confidence in zip(
        predicted["texts"], predicted["label_names"], predicted["confidences"], strict=True
    ):
        say(f"  {label:>10}  {confidence:.3f}  {text}")
    if len(predicted["labels"]) != len(TEXTS):
        raise AssertionError(f"expected {len(TEXTS)} predictions, got {predicted['labels']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("--namespace", default="bert", help="namespace of both releases")
    parser.add_argument("--release", default="bert-finetune", help="bert-finetune release name")
    parser.add_argument("--temporal-release", default="temporal", help="Temporal release name")
    parser.add_argument(
        "--temporal-address", help="reach Temporal here instead of port-forwarding its frontend"
    )
    parser.add_argument("--temporal-namespace", default="default")
    parser.add_argument("--training-task-queue", default="bert-finetune-task-queue")
    parser.add_argument("--inference-task-queue", default="bert-inference-task-queue")
    parser.add_argument("--gpu", action="store_true", help="train on the trainer's GPU")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per step")
    args = parser.parse_args()

    config.load_kube_config(context=args.context)
    wait_for_deployments(client.AppsV1Api(), args.namespace, args.release, args.timeout)
    workers_address = temporal_address_from_release(
        client.CoreV1Api(), args.namespace, args.release
    )
    say(f"workers use Temporal at {workers_address}")

    if args.temporal_address:
        asyncio.run(run_workflows(args.temporal_address, args))
    else:
        frontend = (
            f"{args.temporal_release}-frontend"
            if "temporal" in args.temporal_release
            else f"{args.temporal_release}-temporal-frontend"
        )
        with port_forward(args.context, args.namespace, frontend, 7233) as address:
            asyncio.run(run_workflows(address, args))
    say("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
