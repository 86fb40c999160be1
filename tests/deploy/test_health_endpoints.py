"""The chart's probes and helm test against real workers on a real Temporal dev server.

Runs `bert-finetune worker inferencer|trainer` exactly as the chart does (its rendered
environment, local addresses swapped in), then hits the paths of the rendered probes and runs
the helm test command, `bert-finetune check-pollers`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.chartlib import Render, only
from tests.helpers.binaries import temporal_cli
from tests.helpers.ports import free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    temporal = temporal_cli()
    port = free_port()
    db = tmp_path_factory.mktemp("temporal") / "db.sqlite"
    server = subprocess.Popen(
        [
            temporal,
            "server",
            "start-dev",
            "--headless",
            "--port",
            str(port),
            "--ui-port",
            str(free_port()),
            "--db-filename",
            str(db),
            "--log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return True
            except OSError:
                return False

        wait_for(up, 60, "Temporal dev server did not start")
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def chart_env(render: Render, temporal_address: str, tmp_path_factory: pytest.TempPathFactory):
    objects = render({"gpu": {"enabled": False}})
    env = dict(only(objects, "ConfigMap")["data"])
    scratch = tmp_path_factory.mktemp("pod")
    # What the pod's volumes provide; the rest of the environment is the chart's.
    env |= {
        "TEMPORAL_ADDRESS": temporal_address,
        "BERT_RUNS_DIR": str(scratch / "runs"),
        "HF_HOME": str(scratch / "cache" / "huggingface"),
        "XDG_CACHE_HOME": str(scratch / "cache"),
        "METRICS_BIND_ADDRESS": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
    }
    return objects, {**os.environ, **env}


def start_worker(objects: list[dict], base_env: dict[str, str], worker: str):
    deployment = only(objects, "Deployment", worker)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = dict(base_env)
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
    port = free_port()
    env["METRICS_PORT"] = str(port)
    process = subprocess.Popen(
        [str(BIN / "bert-finetune"), *container["args"]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return process, port, container


def check_pollers(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "bert-finetune"), "check-pollers"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_probes_and_helm_test_against_running_workers(chart_env) -> None:
    objects, env = chart_env
    # With no worker polling, the helm test command must fail with a one-line reason.
    result = check_pollers(env)
    assert result.returncode != 0
    assert result.stdout.strip() or result.stderr.strip()

    processes = []
    try:
        for worker in ("inferencer", "trainer"):
            process, port, container = start_worker(objects, env, worker)
            processes.append(process)
            base = f"http://127.0.0.1:{port}"
            ready = container["readinessProbe"]["httpGet"]["path"]
            live = container["livenessProbe"]["httpGet"]["path"]
            startup = container["startupProbe"]["httpGet"]["path"]

            def answering(
                base: str = base, process: subprocess.Popen = process, ready: str = ready
            ) -> bool:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                try:
                    return http_status(f"{base}{ready}") == 200
                except OSError:
                    return False

            wait_for(answering, 120, f"{worker} never became ready on {ready}")
            assert http_status(f"{base}{live}") == 200
            assert http_status(f"{base}{startup}") == 200
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:  # noqa: S310
                assert b"# TYPE" in response.read()

        # Both task queues now have pollers: the helm test passes.
        def pollers_ok() -> bool:
            return check_pollers(env).returncode == 0

        wait_for(pollers_ok, 60, "check-pollers kept failing with both workers running")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
