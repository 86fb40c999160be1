"""Shared fixtures: a real Temporal dev server, real workers on per-test queues, a tiny BERT."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from services.inferencer.worker import build_inferencer_worker
from services.trainer.worker import build_trainer_worker
from shared.converter import data_converter
from shared.logging import configure_logging
from tests.helpers.binaries import temporal_cli
from tests.tiny import build_tiny_bert, sentiment_rows, write_csv

# Tests keep their data and models under the temp folder; the packaged MiniLM is in the
# virtual environment. Every trainer the tests start (in process or as a child process,
# which inherits this) may read there and nowhere else.
TEST_LOCAL_PATH_ROOTS = (
    Path(tempfile.gettempdir()).resolve(),
    Path(__file__).resolve().parents[1],
    Path(sys.prefix).resolve(),
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BERT_LOCAL_PATH_ROOTS", ":".join(map(str, TEST_LOCAL_PATH_ROOTS)))


async def run_temporal_cli(address: str, *args: str) -> dict:
    """Run the real `temporal` CLI against ``address`` (off the event loop); parse its JSON."""
    import asyncio
    import json

    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *args,
        "--address",
        address,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


# Packages whose conftest starts something expensive once per session (or package): under
# pytest-xdist each worker process has its own session, so such a package runs on one worker.
ONE_WORKER_PACKAGES = {
    "hardening": "one trained tiny run",
    "observability": "one Prometheus scraping real workers through a fine-tune",
    "tracking": "one MLflow server",
}


def xdist_scope(nodeid: str) -> str:
    """What runs whole on one xdist worker: the test's file, or its package when that is
    one of ``ONE_WORKER_PACKAGES``."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in ONE_WORKER_PACKAGES:
        return "/".join(parts[:2])
    return path


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The safe grouping for ``pytest -n 2 --dist loadfile`` (`make test`): every test file
    runs whole on one worker, so its module fixtures start once; the packages above too.
    (xdist's own ``loadgroup`` marks do not reach the scheduler under pytest 9.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrPackageScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return FileOrPackageScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("INFO", "json")


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter,
        dev_server_existing_path=temporal_cli(),
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@dataclass(frozen=True)
class SentimentData:
    train: Path
    validation: Path


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> SentimentData:
    root = tmp_path_factory.mktemp("data")
    return SentimentData(
        train=write_csv(root / "train.csv", sentiment_rows(160, seed=1, string_labels=True)),
        validation=write_csv(
            root / "validation.csv", sentiment_rows(40, seed=2, string_labels=True)
        ),
    )


@pytest.fixture
def runs_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "bert_runs"
    root.mkdir()
    yield root


@dataclass(frozen=True)
class Queues:
    training: str
    inference: str


@asynccontextmanager
async def running_workers(
    client: Client,
    runs_root: Path,
    *,
    trainer: bool = True,
    inferencer: bool = True,
    local_path_roots: tuple[Path, ...] = TEST_LOCAL_PATH_ROOTS,
) -> AsyncIterator[Queues]:
    """Real workers, each test on its own task queues; the trainer (and a promotion gate on
    the inferencer) reads only inside ``local_path_roots``."""
    queues = Queues(f"train-{uuid.uuid4()}", f"infer-{uuid.uuid4()}")
    workers = []
    if trainer:
        workers.append(
            build_trainer_worker(
                client,
                task_queue=queues.training,
                runs_root=runs_root,
                graceful_shutdown=timedelta(seconds=5),
                local_path_roots=local_path_roots,
                inference_task_queue=queues.inference,
            )
        )
    if inferencer:
        workers.append(
            build_inferencer_worker(
                client,
                task_queue=queues.inference,
                runs_root=runs_root,
                model_cache_size=2,
                local_path_roots=local_path_roots,
            )
        )
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        yield queues


def tiny_config(tiny_model: Path, data: SentimentData, **overrides: object) -> dict:
    """A fast config as plain JSON (what a user would send)."""
    config = {
        "model_name": str(tiny_model),
        "train_file": str(data.train),
        "validation_file": str(data.validation),
        "num_epochs": 8,
        "batch_size": 16,
        "learning_rate": 0.005,
        "max_seq_length": 32,
        "use_gpu": False,
    }
    config.update(overrides)
    return config
