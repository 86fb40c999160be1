"""Worker processes for tests: the production entry point in a child process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from shared.temporal import free_loopback_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``bert-finetune worker trainer|controller|inferencer`` in its own process, killable
    like a pod.

    It runs exactly as in production (``python -m bert_finetune.cli worker ROLE``), on a
    per-test task queue, with its JSON log in a file the test reads afterwards and its metrics
    and probes on a free loopback port (``base_url``). Use it as a context manager, or call
    ``stop`` (SIGKILL if still running) or ``terminate`` (SIGTERM first) yourself.
    """

    def __init__(
        self,
        address: str,
        task_queue: str,
        runs_root: Path,
        log_path: Path,
        grace_s: int = 20,
        role: str = "trainer",
        extra_env: dict[str, str] | None = None,
        entry_point: list[str] | None = None,
    ) -> None:
        """``entry_point`` replaces ``-m bert_finetune.cli worker ROLE`` (``seam_worker.py``)."""
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": address,
            "BERT_RUNS_DIR": str(runs_root),
            # A controller polls the training queue too (it runs the trainer queue's workflows).
            "BERT_INFERENCE_TASK_QUEUE" if role == "inferencer" else "BERT_TRAINING_TASK_QUEUE": (
                task_queue
            ),
            "METRICS_BIND_ADDRESS": "127.0.0.1",
            "WORKER_GRACEFUL_SHUTDOWN_SECONDS": str(grace_s),
            "LOG_FORMAT": "json",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # Two workers and the test share the CPU; one thread each avoids oversubscription.
            "OMP_NUM_THREADS": "1",
            **(extra_env or {}),
        }
        command = [sys.executable, *(entry_point or ["-m", "bert_finetune.cli", "worker", role])]
        self.task_queue = task_queue
        self._start(role, command, env, log_path)

    @classmethod
    def with_env(
        cls, role: str, env: dict[str, str], log_path: Path, command: list[str] | None = None
    ) -> WorkerProcess:
        """A worker with exactly ``env`` (plus a free ``METRICS_PORT``): a package's own stack,
        or the environment a chart renders. ``command`` replaces ``python -m bert_finetune.cli
        worker ROLE`` (the chart's ``bert-finetune`` command line)."""
        worker = cls.__new__(cls)
        worker.task_queue = env.get(
            "BERT_INFERENCE_TASK_QUEUE" if role == "inferencer" else "BERT_TRAINING_TASK_QUEUE", ""
        )
        command = command or [sys.executable, "-m", "bert_finetune.cli", "worker", role]
        worker._start(role, command, env, log_path)
        return worker

    def _start(self, role: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.role = role
        self.log_path = log_path
        self.metrics_port = free_loopback_port()
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**env, "METRICS_PORT": str(self.metrics_port)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def base_url(self) -> str:
        """Where its metrics and health endpoints answer."""
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def target(self) -> str:
        """Its metrics endpoint as a Prometheus scrape target."""
        return f"127.0.0.1:{self.metrics_port}"

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker did not exit within {timeout}s")
            await asyncio.sleep(0.1)
        return self.process.returncode

    def stop(self) -> None:
        """SIGKILL if still running: a pod lost without warning."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM, as Kubernetes stops a pod; SIGKILL after ``timeout`` seconds.

        Returns the exit code of a worker that exited by itself, None when it had to be killed.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                return None
        self._log.close()
        return self.process.returncode

    def assert_running(self) -> None:
        """Fails with the end of its log when the worker has exited."""
        assert self.process.poll() is None, (
            f"{self.role} exited with {self.process.returncode}:\n"
            + "\n".join(self.log_lines()[-40:])
        )

    def log_lines(self) -> list[str]:
        """Its non-empty output lines (JSON log lines, and anything else it printed)."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return [line for line in text.splitlines() if line.strip()]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The worker's structured log lines (optionally only one event name)."""
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                found.append(entry)
        return found

    def steps_counter(self) -> float:
        """``bert_training_steps_total`` from this worker's /metrics: steps it has trained."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
            for line in response.read().decode().splitlines():
                if line.startswith("bert_training_steps_total "):
                    return float(line.split()[1])
        return 0.0
