"""`bert-finetune dev`: starts server and workers, keeps history across restarts, stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bert_finetune.stack import port_open
from shared.temporal import free_loopback_port
from tests.helpers.binaries import temporal_cli


def _start_dev(tmp_path: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bert_finetune.cli",
            "dev",
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            str(ports["temporal"]),
            "--ui-port",
            str(ports["ui"]),
            "--trainer-metrics-port",
            str(ports["trainer"]),
            "--inferencer-metrics-port",
            str(ports["inferencer"]),
            "--inferencer-http-port",
            str(ports["http"]),
        ],
        env={**os.environ, "BERT_RUNS_DIR": str(tmp_path / "runs"), "LOG_FORMAT": "json"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for_pollers(address: str, timeout: float = 90) -> None:
    env = {**os.environ, "TEMPORAL_ADDRESS": address}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check = subprocess.run(
            [sys.executable, "-m", "bert_finetune.cli", "check-pollers"],
            env=env,
            capture_output=True,
            timeout=30,
        )
        if check.returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"workers never polled: {check.stdout!r} {check.stderr!r}")


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


@pytest.mark.slow
def test_dev_stack_runs_keeps_history_and_stops_cleanly(tmp_path: Path) -> None:
    names = ("temporal", "ui", "trainer", "inferencer", "http")
    ports = {name: free_loopback_port() for name in names}
    address = f"localhost:{ports['temporal']}"
    dev = _start_dev(tmp_path, ports)
    try:
        _wait_for_pollers(address)
        # A workflow that fails fast (unknown run) leaves a closed execution in the history.
        predict = subprocess.run(
            [sys.executable, "-m", "bert_finetune.cli", "predict", "missing-run", "hello"],
            env={**os.environ, "TEMPORAL_ADDRESS": address},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert predict.returncode == 1
        assert "[RunNotFound]" in predict.stderr and "Traceback" not in predict.stderr
        # The inferencer's HTTP endpoint answers on the port the stack printed.
        http = f"http://localhost:{ports['http']}"
        with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=10) as ready:  # noqa: S310
            assert ready.status == 200
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{http}/v2/models/missing-run", timeout=10)  # noqa: S310
        assert missing.value.code == 404
    finally:
        output = _stop(dev)
    assert "Local stack up" in output
    assert f"http://localhost:{ports['http']}/v2/models/@ALIAS/infer" in output
    for port in ports.values():
        assert not port_open("127.0.0.1", port), f"port {port} still open after Ctrl-C"

    dev = _start_dev(tmp_path, ports)
    try:
        _wait_for_pollers(address)
        listed = subprocess.run(
            [
                temporal_cli(),
                "workflow",
                "list",
                "--address",
                address,
                "--query",
                "WorkflowType='BertInferenceWorkflow'",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "BertInferenceWorkflow" in listed.stdout, "history did not survive the restart"
    finally:
        _stop(dev)
