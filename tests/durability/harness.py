"""Real trainer worker processes and probes of a running training activity.

The worker runs exactly as in production (``python -m bert_finetune.cli worker trainer``),
on a per-test task queue, with its JSON log in a file the test reads afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle

from shared.temporal import free_loopback_port
from shared.types import PROGRESS_QUERY, ExperimentProgress, TrainingProgress
from tests.tiny import sentiment_rows, write_csv

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]


def long_run_csv(root: Path, rows: int = 1000) -> tuple[Path, Path]:
    """1000 rows: 250 steps per epoch at batch size 4, 1000 steps in 4 epochs."""
    return (
        write_csv(root / "long-train.csv", sentiment_rows(rows, seed=3, string_labels=True)),
        write_csv(root / "long-validation.csv", sentiment_rows(40, seed=4, string_labels=True)),
    )


def long_config(model: Path, train: Path, validation: Path, **overrides: object) -> dict:
    config = {
        "model_name": str(model),
        "train_file": str(train),
        "validation_file": str(validation),
        "num_epochs": 4,
        "batch_size": 4,
        "learning_rate": 0.005,
        "max_seq_length": 16,
        "use_gpu": False,
        "checkpoint_steps": 50,
    }
    config.update(overrides)
    return config


class WorkerProcess:
    """``bert-finetune worker trainer`` (or another ``role``) in its own process, killable
    like a pod."""

    def __init__(
        self,
        address: str,
        task_queue: str,
        runs_root: Path,
        log_path: Path,
        grace_s: int = 20,
        role: str = "trainer",
    ) -> None:
        self.log_path = log_path
        self.metrics_port = free_loopback_port()
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": address,
            "BERT_RUNS_DIR": str(runs_root),
            "BERT_TRAINING_TASK_QUEUE": task_queue,
            "METRICS_PORT": str(self.metrics_port),
            "METRICS_BIND_ADDRESS": "127.0.0.1",
            "WORKER_GRACEFUL_SHUTDOWN_SECONDS": str(grace_s),
            "LOG_FORMAT": "json",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # Two workers and the test share the CPU; one thread each avoids oversubscription.
            "OMP_NUM_THREADS": "1",
        }
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bert_finetune.cli", "worker", role],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

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
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()

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


def task_queue() -> str:
    return f"durability-{uuid.uuid4()}"


async def heartbeat(client: Client, handle: WorkflowHandle) -> TrainingProgress | None:
    """The last heartbeat the server holds for the (single) pending training activity,
    in the workflow or, for a run trained in a child workflow, in its (single) child."""
    description = await handle.describe()
    children = description.raw_description.pending_children
    if children:
        child = client.get_workflow_handle(children[0].workflow_id)
        description = await child.describe()
    pending = description.raw_description.pending_activities
    if not pending or not pending[0].heartbeat_details.payloads:
        return None
    (details,) = await client.data_converter.decode(
        pending[0].heartbeat_details.payloads, [TrainingProgress]
    )
    return details


async def query_progress(handle: WorkflowHandle) -> ExperimentProgress:
    return await handle.query(PROGRESS_QUERY, result_type=ExperimentProgress)


async def sealed_checkpoint(handle: WorkflowHandle) -> str | None:
    """The checkpoint the (single) run last reported through the progress query."""
    (run,) = (await query_progress(handle)).runs
    return run.latest_checkpoint


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 60, every: float = 0.2
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def predicts_sentiment(model_dir: str) -> list[str]:
    """Load the saved run like a user would and classify two unambiguous texts."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tokenizer(
        ["the film was great and fun", "the movie was awful"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        labels = model(**batch).logits.argmax(-1).tolist()
    return [model.config.id2label[label] for label in labels]
