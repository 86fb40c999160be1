"""Runs on object storage end to end: a real Temporal server, real workers, a real S3 server
process (moto), and no shared disk.

The trainer, the inferencer and the CLI each have their own private ``BERT_RUNS_DIR``; the
only thing they share is the bucket (``BERT_RUNS_URI``). An experiment trains the tiny BERT
and commits to the store, its export lands there, a promotion moves an alias there, and the
inferencer serves the run by id and by alias from what it downloads.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from temporalio.client import Client

from services.trainer.run_folder import checkpoints
from shared import storage
from shared.runs import RUN_MANIFEST
from shared.storage.alias_store import read_stored_pointer
from shared.storage.objects import ObjectStore
from shared.storage.run_store import CACHE_DIR, RunStore, digest_of
from shared.sweep_types import SWEEP_WORKFLOW, BertSweepOutput
from shared.types import (
    FINE_TUNING_WORKFLOW,
    BertExperimentInput,
    BertExperimentOutput,
    make_run_id,
)
from tests.conftest import Queues, SentimentData, running_workers, tiny_config
from tests.durability.harness import long_config, long_run_csv, task_queue, wait_for
from tests.helpers.exports import wait_for_export
from tests.helpers.processes import WorkerProcess
from tests.helpers.s3 import S3Server, moto_server
from tests.test_cli import cli
from tests.test_promotion import TEXTS, infer, promote
from tests.test_sweep_e2e import GOOD_LR, USELESS_LR
from tests.tiny import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def runs_uri(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; this process's environment (and so the CLI's) points at it."""
    uri = s3.new_bucket()
    for name, value in {**s3.env, "BERT_RUNS_URI": uri}.items():
        monkeypatch.setenv(name, value)
    return uri


@pytest.fixture
def private_dirs(runs_uri: str, tmp_path: Path) -> Iterator[dict[str, tuple[Path, RunStore]]]:
    """The trainer's and the inferencer's own BERT_RUNS_DIR, each bound to the bucket."""
    dirs = {}
    for role in ("trainer", "inferencer"):
        root = tmp_path / role
        root.mkdir()
        store = RunStore(ObjectStore(runs_uri), root)
        storage.bind(root, store)
        dirs[role] = (root, store)
    yield dirs
    for root, _ in dirs.values():
        storage.unbind(root)


@asynccontextmanager
async def private_workers(
    client: Client, private_dirs: dict[str, tuple[Path, RunStore]]
) -> AsyncIterator[Queues]:
    """A trainer and an inferencer, each on its own private folder bound to the bucket."""
    async with (
        running_workers(client, private_dirs["trainer"][0], inferencer=False) as training,
        running_workers(client, private_dirs["inferencer"][0], trainer=False) as inference,
    ):
        yield Queues(training.training, inference.inference)


async def test_an_experiment_on_object_storage_is_exported_promoted_and_served(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_uri: str,
    private_dirs: dict[str, tuple[Path, RunStore]],
    tmp_path: Path,
) -> None:
    _, store = private_dirs["trainer"]
    inferencer_root, _ = private_dirs["inferencer"]
    experiment = BertExperimentInput.model_validate(
        {"experiment_name": "on-s3", "runs": [tiny_config(tiny_model, sentiment_csv)]}
    )
    async with private_workers(client, private_dirs) as queues:
        output = await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id=f"on-s3-{uuid.uuid4()}",
            task_queue=queues.training,
            result_type=BertExperimentOutput,
        )
        (run,) = output.runs
        assert run.model_dir == f"{runs_uri}/{run.run_id}"
        exported = await wait_for_export(client, run.run_id)
        assert exported.outcome == "exported"

        # The commit and its export are in the store, under the digest of its run.json.
        blob = store.record(run.run_id)
        assert blob is not None
        prefix = f"{run.run_id}/commits/{digest_of(blob.data)}/"
        keys = {info.key for info in store.objects.listing(prefix)}
        assert {prefix + "model.safetensors", prefix + "onnx/export.json"} <= keys

        promoted = await promote(client, queues.training, run.run_id, "production")
        assert (promoted.run_id, promoted.previous_run_id) == (run.run_id, None)
        by_run = await infer(client, queues.inference, run_id=run.run_id)
        by_alias = await infer(client, queues.inference, alias="production")
        assert by_run.run_id == by_alias.run_id == run.run_id
        assert by_run.label_names == by_alias.label_names == ["positive", "negative"]
        # The inferencer served from its own download of the commit (with the export).
        cached = {p.name for p in (inferencer_root / CACHE_DIR).glob(f"*/{run.run_id}/*")}
        assert {RUN_MANIFEST, "model.safetensors", "onnx"} <= cached
        # The cache wiped under a serving inferencer: the next request downloads it again.
        shutil.rmtree(inferencer_root / CACHE_DIR)
        again = await infer(client, queues.inference, alias="production")
        assert again.label_names == by_alias.label_names
        assert list((inferencer_root / CACHE_DIR).glob(f"*/{run.run_id}/model.safetensors"))

        # The CLI, with a third private folder, reads the same runs and aliases.
        cli_root = tmp_path / "cli"
        code, out, err = await cli(client, queues, cli_root, "runs", "--json")
        assert code == 0, err
        (listed,) = json.loads(out[out.index("[") :])
        assert (listed["run_id"], listed["complete"], listed["aliases"]) == (
            run.run_id,
            True,
            ["production"],
        )
        code, out, err = await cli(client, queues, cli_root, "runs", "show", run.run_id)
        assert code == 0 and run.run_id in out, err
        code, out, err = await cli(
            client, queues, cli_root, "predict", "@production", *TEXTS, "--json"
        )
        assert code == 0, err
        predicted = json.loads(out[out.index("{") :])
        assert predicted["label_names"] == ["positive", "negative"]


async def test_a_sweep_on_object_storage_prunes_promotes_and_serves_its_best(
    client: Client,
    tiny_model: Path,
    runs_uri: str,
    private_dirs: dict[str, tuple[Path, RunStore]],
    tmp_path: Path,
) -> None:
    """Successive halving with every trial committed to the store: the pruned trials are
    complete runs there too, only the best is exported, the alias moves in the store, and an
    inferencer that shares nothing with the trainer but the bucket serves it."""
    _, store = private_dirs["trainer"]
    # 800 rows: one epoch takes a good learning rate far above chance, a useless one not.
    data = SentimentData(
        train=write_csv(tmp_path / "train.csv", sentiment_rows(800, seed=1)),
        validation=write_csv(tmp_path / "validation.csv", sentiment_rows(40, seed=2)),
    )
    sweep = {
        "sweep_name": "s3-halving",
        "base": tiny_config(tiny_model, data, num_epochs=2),
        "space": {"learning_rate": {"values": [GOOD_LR, USELESS_LR, 0.007]}},
        "strategy": "grid",
        "max_concurrent_trials": 1,
        "early_stopping": {"type": "successive_halving", "reduction_factor": 2},
        "promote_alias": "s3-best",
    }
    async with private_workers(client, private_dirs) as queues:
        output = await client.execute_workflow(
            SWEEP_WORKFLOW,
            sweep,
            id=f"s3-sweep-{uuid.uuid4()}",
            task_queue=queues.training,
            result_type=BertSweepOutput,
        )
        # The first trial always goes on; the useless learning rate is never among the best.
        states = [t.state for t in output.trials]
        assert states[:2] == ["succeeded", "pruned"]
        best = next(t for t in output.trials if t.run_id == output.best_run_id)
        assert best.state == "succeeded"
        assert (await wait_for_export(client, output.best_run_id)).outcome == "exported"
        served = await infer(client, queues.inference, alias="s3-best")
    assert served.run_id == output.best_run_id
    assert read_stored_pointer(store, "s3-best").run_id == output.best_run_id
    for trial in output.trials:
        blob = store.record(trial.run_id)
        assert blob is not None, trial.run_id
        record = json.loads(blob.data)
        assert record["stopped_early"] == (trial.state == "pruned")
        prefix = f"{trial.run_id}/commits/{digest_of(blob.data)}/"
        keys = {info.key for info in store.objects.listing(prefix)}
        assert prefix + "model.safetensors" in keys
        assert (prefix + "onnx/export.json" in keys) == (trial.run_id == output.best_run_id)
        # No checkpoint of a finished trial is left in the store.
        assert store.checkpoints(trial.run_id, checkpoints.MANIFEST_NAME) == []


@pytest.mark.slow
async def test_a_trainer_killed_mid_training_resumes_on_another_from_the_stores_checkpoint(
    client: Client,
    tiny_model: Path,
    s3: S3Server,
    runs_uri: str,
    private_dirs: dict[str, tuple[Path, RunStore]],
    tmp_path: Path,
) -> None:
    """SIGKILL a trainer process once a checkpoint of its run is sealed in the store; a
    trainer on another machine (its own empty BERT_RUNS_DIR) resumes from that checkpoint."""
    _, store = private_dirs["trainer"]
    queue = task_queue()
    train, validation = long_run_csv(tmp_path)
    config = long_config(tiny_model, train, validation, checkpoint_steps=50)
    experiment = BertExperimentInput.model_validate(
        {"experiment_name": "kill-s3", "runs": [config], "heartbeat_timeout_seconds": 5}
    )
    address = client.service_client.config.target_host
    first = WorkerProcess(
        address,
        queue,
        tmp_path / "first-private",
        tmp_path / "first.log",
        extra_env={**s3.env, "BERT_RUNS_URI": runs_uri},
    )
    second: WorkerProcess | None = None
    try:
        handle = await client.start_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id=f"kill-s3-{uuid.uuid4()}",
            task_queue=queue,
            result_type=BertExperimentOutput,
        )
        run_id = make_run_id("kill-s3", 0, str(tiny_model))

        async def stored_checkpoint() -> str | None:
            found = await asyncio.to_thread(store.checkpoints, run_id, checkpoints.MANIFEST_NAME)
            return found[0] if found else None

        uploaded = await wait_for(stored_checkpoint, "a checkpoint sealed in the store", 180)
        first.signal(signal.SIGKILL)
        assert await first.wait(10) == -signal.SIGKILL
        assert store.record(run_id) is None  # nothing complete
        second = WorkerProcess(
            address,
            queue,
            tmp_path / "second-private",
            tmp_path / "second.log",
            extra_env={**s3.env, "BERT_RUNS_URI": runs_uri},
        )
        output = await asyncio.wait_for(handle.result(), timeout=300)
        (run,) = output.runs
        assert run.run_id == run_id
        step = int(uploaded.rsplit("-", 1)[-1])
        assert run.resumed_from_step is not None and run.resumed_from_step >= step
        assert second.events("store.checkpoint_downloaded")
        assert store.record(run_id) is not None
        assert store.checkpoints(run_id, checkpoints.MANIFEST_NAME) == []
    finally:
        first.stop()
        if second is not None:
            second.stop()
