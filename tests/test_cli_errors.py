"""Every failure a user can reach from the real CLI process is one line with the fix.

Each command runs as ``python -m bert_finetune.cli`` (the console script's code path), so a
traceback anywhere on the way would show up here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from shared.temporal import free_loopback_port

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    def one_error_line(self) -> str:
        """The single ``error:`` line on stderr besides JSON log events; exit code 1."""
        assert "Traceback" not in self.stdout + self.stderr, self.stderr
        lines = [
            line
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith('{"')  # workers log JSON events to stderr
        ]
        assert len(lines) == 1, f"expected one line on stderr, got {lines}"
        assert lines[0].startswith("error: "), lines[0]
        assert self.returncode == 1, self.returncode
        return lines[0]


def bert_finetune(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> Outcome:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "BERT_"))}
    process = subprocess.run(
        [sys.executable, "-m", "bert_finetune.cli", *args],
        cwd=REPO_ROOT,
        env={**base, "COLUMNS": "400", "LOG_FORMAT": "json", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(process.returncode, process.stdout, process.stderr)


@contextmanager
def occupied_port() -> Iterator[int]:
    """A loopback port some other process is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def closed_address() -> str:
    return f"127.0.0.1:{free_loopback_port()}"


def test_worker_with_a_busy_metrics_port_names_the_port_and_the_setting() -> None:
    with occupied_port() as port:
        outcome = bert_finetune(
            "worker",
            "trainer",
            env={
                "TEMPORAL_ADDRESS": closed_address(),
                "METRICS_PORT": str(port),
                "METRICS_BIND_ADDRESS": "127.0.0.1",
            },
        )
    line = outcome.one_error_line()
    assert f"METRICS_PORT={port} is already in use" in line
    assert "set METRICS_PORT to a free port" in line


def _experiment(tmp_path: Path) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(
        "experiment_name: errors\nruns:\n  - model_name: bert-base-uncased\n"
        "    train_file: train.csv\n",
        encoding="utf-8",
    )
    return path


def test_client_commands_explain_unreachable_and_wrong_temporal_settings(
    client: Client, tmp_path: Path
) -> None:
    address = client.service_client.config.target_host
    experiment = str(_experiment(tmp_path))
    queues = {
        "BERT_TRAINING_TASK_QUEUE": f"errors-{uuid.uuid4()}",
        "BERT_INFERENCE_TASK_QUEUE": f"errors-{uuid.uuid4()}",
    }
    server = {"TEMPORAL_ADDRESS": address, **queues}
    cases = [
        (
            ["cancel", "anything"],
            {"TEMPORAL_ADDRESS": closed_address()},
            ["cannot reach Temporal", "connection refused", "TEMPORAL_ADDRESS"],
        ),
        (
            ["train", experiment],
            {"TEMPORAL_ADDRESS": "no-such-host.invalid:7233"},
            ["the host name does not resolve", "TEMPORAL_ADDRESS"],
        ),
        (
            ["train", experiment, "--no-wait"],
            {**server, "TEMPORAL_NAMESPACE": "no-such-namespace"},
            ["'no-such-namespace' does not exist", "TEMPORAL_NAMESPACE"],
        ),
        (
            ["progress", f"never-started-{uuid.uuid4()}"],
            server,
            ["workflow not found", "check the workflow id"],
        ),
        (
            ["check-pollers"],
            server,
            ["no workers polling", "bert-finetune worker"],
        ),
    ]
    for args, env, fragments in cases:
        line = bert_finetune(*args, env=env).one_error_line()
        for fragment in fragments:
            assert fragment in line, f"{args}: {fragment!r} not in {line!r}"


def test_progress_of_a_workflow_no_trainer_serves_points_at_the_workers(
    client: Client, tmp_path: Path
) -> None:
    queue = f"errors-{uuid.uuid4()}"
    env = {"TEMPORAL_ADDRESS": client.service_client.config.target_host}
    started = bert_finetune(
        "train",
        str(_experiment(tmp_path)),
        "--no-wait",
        "--workflow-id",
        f"errors-{uuid.uuid4()}",
        env={**env, "BERT_TRAINING_TASK_QUEUE": queue},
    )
    assert started.returncode == 0, started.stderr
    workflow_id = started.stdout.strip()
    try:
        began = time.monotonic()
        line = bert_finetune("progress", workflow_id, env=env).one_error_line()
        assert "no trainer answered the progress query" in line
        assert "bert-finetune check-pollers" in line
        assert time.monotonic() - began < 60
    finally:
        assert bert_finetune("cancel", workflow_id, env=env).returncode == 0


def test_experiment_and_runs_folder_problems_are_one_line(tmp_path: Path) -> None:
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("runs: [\n", encoding="utf-8")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("experiment_name: caf\xe9\n".encode("latin-1"))
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    not_a_folder = tmp_path / "runs-file"
    not_a_folder.write_text("", encoding="utf-8")
    env = {"TEMPORAL_ADDRESS": closed_address()}  # none of these may get as far as connecting
    cases = [
        (["train", str(tmp_path / "missing.yaml")], env, ["does not exist"]),
        (["train", str(folder)], env, ["is not a file"]),
        (["train", str(broken_yaml)], env, ["[InvalidConfig]", "not valid YAML"]),
        (["train", str(latin1)], env, ["not UTF-8"]),
        (["predict", "some-run", "--file", str(tmp_path / "none.txt")], env, ["does not exist"]),
        (["runs"], {**env, "BERT_RUNS_DIR": str(not_a_folder)}, ["is not a directory"]),
        (["worker", "trainer"], {**env, "METRICS_PORT": "nine"}, ["METRICS_PORT", "integer"]),
    ]
    for args, case_env, fragments in cases:
        line = bert_finetune(*args, env=case_env).one_error_line()
        for fragment in fragments:
            assert fragment in line, f"{args}: {fragment!r} not in {line!r}"


def test_dev_refuses_a_busy_temporal_port_in_one_line(tmp_path: Path) -> None:
    with occupied_port() as port:
        outcome = bert_finetune(
            "dev", "--state-dir", str(tmp_path / "state"), "--port", str(port), timeout=60
        )
    line = outcome.one_error_line()
    assert f"Temporal port {port} is already in use" in line and "--port" in line


def _metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:  # noqa: S310
            return reply.status == 200
    except OSError:
        return False


def test_dev_replaces_busy_ui_and_metrics_ports_and_prints_the_new_ones(tmp_path: Path) -> None:
    temporal_port = free_loopback_port()
    with occupied_port() as ui_port, occupied_port() as trainer_port:
        inferencer_port = free_loopback_port()
        dev = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bert_finetune.cli",
                "dev",
                "--state-dir",
                str(tmp_path / "state"),
                "--port",
                str(temporal_port),
                "--ui-port",
                str(ui_port),
                "--trainer-metrics-port",
                str(trainer_port),
                "--inferencer-metrics-port",
                str(inferencer_port),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "BERT_RUNS_DIR": str(tmp_path / "runs"), "COLUMNS": "400"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Started with SIGINT ignored, as a shell's background job is (and as a process
            # this test runs in may be): `dev` must still stop on SIGINT.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        try:
            lines: list[str] = []
            deadline = time.monotonic() + 120
            assert dev.stdout is not None
            while time.monotonic() < deadline and not any("Ctrl-C stops" in x for x in lines):
                line = dev.stdout.readline()
                if not line:
                    break
                lines.append(line)
            output = "".join(lines)
            assert f"Web UI port {ui_port} is in use; using" in output, output
            assert f"trainer metrics port {trainer_port} is in use; using" in output, output
            substitute = int(
                output.split(f"trainer metrics port {trainer_port} is in use; using ")[1].split()[0]
            )
            assert f"trainer http://localhost:{substitute}/metrics" in output
            assert f"inferencer http://localhost:{inferencer_port}/metrics" in output
            deadline = time.monotonic() + 90
            while not _metrics_up(substitute):
                assert dev.poll() is None, "dev stopped"
                assert time.monotonic() < deadline, "trainer metrics never came up"
                time.sleep(0.5)
        finally:
            dev.send_signal(signal.SIGINT)
            rest, _ = dev.communicate(timeout=90)
    assert dev.returncode == 0, rest
    assert "Traceback" not in rest
