"""A real MLflow tracking server (SQLite backend) for the tracking tests, started once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bert_finetune.stack import MLFLOW_SERVER_ENV, mlflow_server_command
from shared.temporal import free_loopback_port


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    log_path: Path

    def client(self):  # noqa: ANN201 (mlflow is imported lazily, like the trainer does)
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def _wait_healthy(uri: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 180  # first start creates the schema; slow on 2 cores
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail("mlflow server did not become healthy within 180 s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    state = tmp_path_factory.mktemp("mlflow")
    port = free_loopback_port()
    log_path = state / "server.log"
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            mlflow_server_command(state, port),
            env={**os.environ, **MLFLOW_SERVER_ENV},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its uvicorn child goes down with it
        )
    server = MlflowServer(uri=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        _wait_healthy(server.uri, process, log_path)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
