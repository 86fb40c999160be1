"""The chart's probes and helm test against real workers on a real Temporal dev server.

Runs `bert-finetune worker inferencer|trainer` exactly as the chart does (its rendered
environment, local addresses swapped in), then hits the paths of the rendered probes and runs
the helm test command, `bert-finetune check-pollers`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.health import LIVENESS_STALE_SECONDS
from tests.deploy.chartlib import Render, only
from tests.helpers.binaries import bert_finetune, temporal_cli
from tests.helpers.ports import free_port
from tests.helpers.processes import WorkerProcess

pytestmark = pytest.mark.slow


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


def start_worker(
    objects: list[dict], base_env: dict[str, str], worker: str, log_path: Path, **env: str
) -> tuple[WorkerProcess, dict]:
    """A worker started like the chart starts it (its command line and environment), its JSON
    log lines going to ``log_path``; also the Deployment's container spec."""
    deployment = only(objects, "Deployment", worker)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    full_env = dict(base_env)
    for var in container["env"]:
        if "value" in var:
            full_env[var["name"]] = var["value"]
    if "BERT_HTTP_PORT" in full_env:  # the chart's fixed port: tests share the machine
        full_env |= {"BERT_HTTP_PORT": str(free_port()), "BERT_HTTP_BIND_ADDRESS": "127.0.0.1"}
    full_env |= {"LOG_FORMAT": "json", **env}
    command = [bert_finetune(), *container["args"]]
    process = WorkerProcess.with_env(worker, full_env, log_path, command=command)
    # Where the probes that name the port "http" (the inferencer's) reach it.
    process.http_url = f"http://127.0.0.1:{full_env.get('BERT_HTTP_PORT', 0)}"  # type: ignore[attr-defined]
    return process, container


def check_pollers(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [bert_finetune(), "check-pollers"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_probes_and_helm_test_against_running_workers(chart_env, tmp_path: Path) -> None:
    objects, env = chart_env
    # With no worker polling, the helm test command must fail with a one-line reason.
    result = check_pollers(env)
    assert result.returncode != 0
    assert result.stdout.strip() or result.stderr.strip()

    processes: list[WorkerProcess] = []
    try:
        # Inferencer and controller first: with GPU trainers scaled to zero the helm test passes.
        for worker in ("inferencer", "controller", "trainer"):
            process, container = start_worker(objects, env, worker, tmp_path / f"{worker}.log")
            processes.append(process)
            # The inferencer's probes ask its Open Inference Protocol endpoint (port "http").
            ports = {"metrics": process.base_url, "http": process.http_url}  # type: ignore[attr-defined]
            probes = {p: container[p]["httpGet"] for p in ("readinessProbe", "livenessProbe")}
            probes["startupProbe"] = container["startupProbe"]["httpGet"]
            base = ports[probes["readinessProbe"]["port"]]
            ready = probes["readinessProbe"]["path"]
            live = probes["livenessProbe"]["path"]
            startup = probes["startupProbe"]["path"]
            assert {p["port"] for p in probes.values()} <= set(ports)

            def answering(
                base: str = base, process: WorkerProcess = process, ready: str = ready
            ) -> bool:
                process.assert_running()
                try:
                    return http_status(f"{base}{ready}") == 200
                except OSError:
                    return False

            wait_for(answering, 120, f"{worker} never became ready on {ready}")
            assert http_status(f"{base}{live}") == 200
            assert http_status(f"{base}{startup}") == 200
            metrics_url = f"{process.base_url}/metrics"
            with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310
                assert b"# TYPE" in response.read()
            if worker == "controller":
                wait_for(
                    lambda: check_pollers(env).returncode == 0,
                    60,
                    "check-pollers kept failing with an inferencer and a controller running",
                )
    finally:
        for process in processes:
            process.signal(signal.SIGTERM)
        for process in processes:
            process.terminate(timeout=60)


def http_body(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_liveness_outlasts_an_unreachable_temporal_and_a_missing_namespace(
    chart_env, temporal_address: str, tmp_path: Path
) -> None:
    """Kubernetes must keep such pods running and not ready, not restart-loop them.

    One worker points at a closed port, another at a real server whose namespace does not
    exist yet; both are watched for longer than the liveness stale window. Creating the
    namespace then makes the second one ready without a restart.
    """
    objects, env = chart_env
    namespace = f"created-later-{uuid.uuid4().hex[:8]}"
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: connections are refused
    unreachable, _ = start_worker(
        objects, env, "inferencer", tmp_path / "unreachable.log", TEMPORAL_ADDRESS=closed
    )
    missing, _ = start_worker(
        objects, env, "inferencer", tmp_path / "missing.log", TEMPORAL_NAMESPACE=namespace
    )
    unreachable_url, missing_url = unreachable.base_url, missing.base_url
    workers = {"unreachable": (unreachable, unreachable_url), "missing": (missing, missing_url)}
    try:
        for name, (process, url) in workers.items():

            def serving(process: WorkerProcess = process, url: str = url) -> bool:
                process.assert_running()
                try:
                    return http_status(f"{url}/healthz") == 200
                except OSError:
                    return False

            wait_for(serving, 120, f"{name}: /healthz never answered")
        deadline = time.monotonic() + LIVENESS_STALE_SECONDS + 10
        while time.monotonic() < deadline:
            for name, (process, url) in workers.items():
                process.assert_running()
                assert http_status(f"{url}/healthz") == 200, f"{name}: liveness failed"
                assert http_status(f"{url}/readyz") == 503, f"{name}: ready without Temporal"
            time.sleep(2)

        status, body = http_body(f"{unreachable_url}/readyz")
        assert status == 503 and "Temporal unreachable" in body, body
        # The HTTP path needs no Temporal: the pod stays in its Service and serves.
        http_ready = f"{unreachable.http_url}/v2/health/ready"  # type: ignore[attr-defined]
        assert http_status(http_ready) == 200
        status, body = http_body(f"{missing_url}/readyz")
        assert status == 503 and f"namespace {namespace!r} does not exist" in body, body
        events = [
            json.loads(line)
            for line in (tmp_path / "missing.log").read_text().splitlines()
            if line.startswith("{")
        ]
        waiting = [e for e in events if e["event"] == "temporal.namespace_unavailable"]
        assert waiting and "temporal operator namespace create" in waiting[0]["error"]
        assert waiting[0]["namespace"] == namespace

        temporal = temporal_cli()
        subprocess.run(
            [
                temporal,
                "operator",
                "namespace",
                "create",
                "--namespace",
                namespace,
                "--address",
                temporal_address,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ready() -> bool:
            missing.assert_running()
            return http_status(f"{missing_url}/readyz") == 200

        wait_for(ready, 120, "the worker did not become ready once its namespace existed")
        assert http_status(f"{unreachable_url}/readyz") == 503
    finally:
        for process, _ in workers.values():
            process.signal(signal.SIGTERM)
        exits = {name: process.terminate(timeout=60) for name, (process, _) in workers.items()}
        # SIGTERM while waiting for Temporal must exit cleanly (None: it had to be killed).
        assert exits == {"unreachable": 0, "missing": 0}, exits


def run_namespace_hook(
    render: Render,
    temporal_address: str,
    namespace: str,
    timeout_seconds: int = 180,
    is_upgrade: bool = False,
) -> subprocess.CompletedProcess:
    """The chart's hook Job command, with its rendered environment and a local address."""
    hook = {"enabled": True, "timeoutSeconds": timeout_seconds}
    values = {"temporal": {"namespace": namespace, "createNamespace": hook}}
    job = only(render(values, is_upgrade=is_upgrade), "Job", "namespace-hook")
    container = job["spec"]["template"]["spec"]["containers"][0]
    hook_env = {v["name"]: v["value"] for v in container["env"] if "value" in v}
    hook_env["TEMPORAL_ADDRESS"] = temporal_address
    python_index = container["command"].index("python")
    command = [sys.executable, *container["command"][python_index + 1 :], *container["args"]]
    return subprocess.run(
        command, env={**os.environ, **hook_env}, capture_output=True, text=True, timeout=120
    )


def test_namespace_hook_creates_the_namespace_once(render: Render, temporal_address: str) -> None:
    namespace = f"hooked-{uuid.uuid4().hex[:8]}"
    first = run_namespace_hook(render, temporal_address, namespace)
    assert first.returncode == 0, first.stderr
    assert "temporal.namespace_created" in first.stderr
    again = run_namespace_hook(render, temporal_address, namespace)  # every helm upgrade
    assert again.returncode == 0, again.stderr
    assert "temporal.namespace_exists" in again.stderr
    temporal = temporal_cli()
    described = subprocess.run(
        [
            temporal,
            "operator",
            "namespace",
            "describe",
            "--namespace",
            namespace,
            "--address",
            temporal_address,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    retention = json.loads(described.stdout)["config"]["workflowExecutionRetentionTtl"]
    assert retention == "259200s"  # the chart's default retentionDays: 3


def test_namespace_hook_gives_up_with_a_clear_error_when_temporal_never_answers(
    render: Render,
) -> None:
    result = run_namespace_hook(render, f"127.0.0.1:{free_port()}", "never", timeout_seconds=30)
    assert result.returncode == 1
    assert "temporal.namespace_create_failed" in result.stderr


def test_namespace_hook_on_an_upgrade_succeeds_while_temporal_is_down(render: Render) -> None:
    """An outage of Temporal must not fail `helm upgrade`: the upgrade's hook gives up after
    its short wait with a warning and exit status 0 (the workers wait for the namespace)."""
    started = time.monotonic()
    result = run_namespace_hook(render, f"127.0.0.1:{free_port()}", "never", is_upgrade=True)
    assert result.returncode == 0, result.stderr
    assert "temporal.namespace_create_skipped" in result.stderr
    assert time.monotonic() - started < 90
