"""The chart's object-storage environment read by real workers against a real S3 server.

`bert-finetune worker controller` and `worker inferencer`, started exactly as the chart starts
them with `storage.uri` (the env ConfigMap, the container's variables, the Secret's keys where
the kubelet would put them), against moto's S3 server: the worker's start-up check of
conditional writes passes through the chart's endpoint, region and keys, leaving nothing in the
bucket, and a bucket it cannot use makes it exit with one line, as the pod's log would show it.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.chartlib import Render, only
from tests.helpers.binaries import bert_finetune
from tests.helpers.ports import free_port
from tests.helpers.processes import WorkerProcess
from tests.helpers.s3 import S3Server, moto_server

SECRET = "bert-runs-keys"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def pod_env(objects: list[dict], worker: str, secret: dict[str, str], pod: Path) -> dict[str, str]:
    """The worker container's environment as the kubelet builds it, with local stand-ins for
    what the pod's volumes and the cluster provide (its cache folder, a Temporal that is not
    there: the store is checked before Temporal is dialled)."""
    deployment = only(objects, "Deployment", worker)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = dict(only(objects, "ConfigMap")["data"])
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            if ref["name"] == SECRET:
                env[var["name"]] = secret[ref["key"]]
    cache = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}["runs"]
    assert "emptyDir" in cache  # the pod's private cache, here a private folder
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **env,
        "BERT_RUNS_DIR": str(pod / "runs"),
        "HF_HOME": str(pod / "cache" / "huggingface"),
        "XDG_CACHE_HOME": str(pod / "cache"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "METRICS_BIND_ADDRESS": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "LOG_FORMAT": "json",
    }


def rendered(render: Render, s3: S3Server, uri: str) -> list[dict]:
    return render(
        {
            "gpu": {"enabled": False},
            "inferencer": {"http": {"enabled": False}},
            "storage": {
                "uri": uri,
                "endpoint": s3.endpoint,
                "region": "us-east-1",
                "existingSecret": SECRET,
            },
        }
    )


def alive(process: WorkerProcess) -> bool:
    process.assert_running()
    try:
        with urllib.request.urlopen(f"{process.base_url}/healthz", timeout=2) as response:  # noqa: S310
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.3)


@pytest.mark.parametrize("worker", ["controller", "inferencer"])
def test_workers_pass_the_store_check_with_the_charts_environment(
    render: Render, s3: S3Server, tmp_path: Path, worker: str
) -> None:
    uri = s3.new_bucket()
    objects = rendered(render, s3, uri)
    env = pod_env(objects, worker, KEYS, tmp_path)
    assert env["AWS_ENDPOINT_URL_S3"] == s3.endpoint and "AWS_ENDPOINT_URL" not in env
    process = WorkerProcess.with_env(
        worker, env, tmp_path / f"{worker}.log", command=[bert_finetune(), "worker", worker]
    )
    try:
        wait_for(lambda: alive(process), 90, f"{worker} never served /healthz")
        (starting,) = process.events("worker.starting")
        assert starting["runs_uri"] == uri
    finally:
        process.terminate()
    # The check's scratch key is gone: nothing of it stays in the bucket.
    import boto3  # type: ignore[import-untyped]

    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/.probes/")
    assert listed.get("KeyCount", 0) == 0


def test_a_bucket_the_keys_cannot_reach_stops_the_worker_with_one_line(
    render: Render, s3: S3Server, tmp_path: Path
) -> None:
    missing = "s3://no-such-bucket-for-bert/runs"
    objects = rendered(render, s3, missing)
    env = pod_env(objects, "controller", KEYS, tmp_path)
    process = WorkerProcess.with_env(
        "controller",
        env,
        tmp_path / "controller.log",
        command=[bert_finetune(), "worker", "controller"],
    )
    try:
        wait_for(lambda: process.process.poll() is not None, 90, "the worker kept running")
    finally:
        process.terminate()
    assert process.process.returncode != 0
    lines = [line for line in process.log_lines() if "BERT_RUNS_URI" in line]
    assert lines and missing in lines[0], process.log_lines()[-10:]
