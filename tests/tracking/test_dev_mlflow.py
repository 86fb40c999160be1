"""`bert-finetune dev --mlflow`: a real MLflow server beside the Temporal dev server, its UI
address printed, the trainer logging to it, and everything stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bert_finetune.stack import port_open
from shared.temporal import free_loopback_port
from tests.conftest import SentimentData, tiny_config
from tests.test_dev_stack import _wait_for_pollers


def _wait_healthy(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"MLflow at {url} never answered")


@pytest.mark.slow
def test_dev_with_mlflow_tracks_runs_and_stops_cleanly(
    tmp_path: Path, tiny_model: Path, sentiment_csv: SentimentData
) -> None:
    ports = {
        name: free_loopback_port() for name in ("temporal", "ui", "trainer", "inferencer", "mlflow")
    }
    address = f"localhost:{ports['temporal']}"
    mlflow_url = f"http://127.0.0.1:{ports['mlflow']}"
    env = {
        **os.environ,
        "BERT_RUNS_DIR": str(tmp_path / "runs"),
        "LOG_FORMAT": "json",
        "MLFLOW_TRACKING_URI": "",  # the stack must set the trainer's, not inherit one
    }
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bert_finetune.cli",
            "dev",
            "--mlflow",
            "--mlflow-port",
            str(ports["mlflow"]),
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
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(mlflow_url)
        _wait_for_pollers(address)
        experiment = tmp_path / "experiment.json"
        experiment.write_text(
            json.dumps(
                {
                    "experiment_name": "dev-tracked",
                    "runs": [tiny_config(tiny_model, sentiment_csv, num_epochs=1)],
                }
            )
        )
        train = subprocess.run(
            [sys.executable, "-m", "bert_finetune.cli", "train", str(experiment)],
            env={**env, "TEMPORAL_ADDRESS": address},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert train.returncode == 0, train.stdout + train.stderr

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_url)
        tracked = client.get_experiment_by_name("dev-tracked")
        (run,) = client.search_runs([tracked.experiment_id])
        assert run.info.run_name == "dev-tracked-run-0-" + tiny_model.as_posix().replace("/", "_")
        assert run.info.status == "FINISHED" and "eval_accuracy" in run.data.metrics
    finally:
        dev.send_signal(signal.SIGINT)
        output, _ = dev.communicate(timeout=120)
    text = output.decode(errors="replace")
    assert dev.returncode == 0, text
    assert f"MLflow UI {mlflow_url}" in text
    assert not port_open("127.0.0.1", ports["mlflow"]), "MLflow still listening after Ctrl-C"
    assert (tmp_path / "state" / "mlflow.db").is_file()
