"""The runs store against a real S3 server process (moto): commits, fencing, aliases, cache.

Each "worker" here is what a pod has: its own private ``BERT_RUNS_DIR`` bound to its own
``RunStore`` client of one shared bucket. Nothing waits on time: races are made by the order
of claims and commits, a kill by a process that kills itself in the middle of its upload.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from services.trainer.run_folder import checkpoints
from services.trainer.run_folder.fencing import AttemptToken, Superseded
from services.trainer.run_folder.run_directory import RunDirectory
from shared import aliases, storage
from shared.errors import RUN_NOT_FOUND
from shared.run_record import RunRecord
from shared.runs import (
    RUN_MANIFEST,
    commit_digest,
    list_runs,
    resolve_served_run,
    write_record,
)
from shared.settings import Settings, SettingsError
from shared.storage.objects import ObjectStore, check_conditional_writes
from shared.storage.run_store import CACHE_DIR, FenceToken, Refused, RunStore, digest_of
from shared.temporal import free_loopback_port
from shared.types import BertPromoteOutput
from tests.helpers.processes import REPO_ROOT
from tests.helpers.runs import sample_record
from tests.helpers.s3 import S3Server, moto_server

LABELS = ["negative", "positive"]
WEIGHTS = b"\x00" * 4096


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def store_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's AWS variables, and a fresh bucket's runs URI."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return {**s3.env, "BERT_RUNS_URI": s3.new_bucket()}


class Workers:
    """Private runs folders, each bound to its own client of the test's bucket."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri, self.root = uri, root
        self.bound: list[Path] = []

    def new(self, name: str, cache_bytes: int = 1 << 30) -> tuple[Path, RunStore]:
        private = self.root / name
        private.mkdir()
        store = RunStore(ObjectStore(self.uri), private, cache_bytes)
        storage.bind(private, store)
        self.bound.append(private)
        return private, store


@pytest.fixture
def workers(store_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    found = Workers(store_env["BERT_RUNS_URI"], tmp_path)
    yield found
    for root in found.bound:
        storage.unbind(root)


def token(attempt: int, workflow: str = "experiment") -> AttemptToken:
    return AttemptToken(workflow, f"{workflow}-run", attempt)


def record(run_id: str, loss: float = 0.5) -> RunRecord:
    made = sample_record(run_id, LABELS)
    return made.model_copy(update={"result": made.result.model_copy(update={"train_loss": loss})})


def save_model(weights: bytes) -> object:
    def save(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))

    return save


def commit(root: Path, run_id: str, attempt: AttemptToken, loss: float, overwrite=False) -> None:
    run = RunDirectory(root, run_id)
    run.claim(None, attempt, overwrite, "identity")
    run.commit(save_model(WEIGHTS + str(loss).encode()), record(run_id, loss), attempt.attempt)


def stored_record(store: RunStore, run_id: str) -> RunRecord | None:
    blob = store.record(run_id)
    return RunRecord.from_json(blob.data) if blob is not None else None


# -- settings and the start-up check ---------------------------------------------------------


def test_with_a_store_the_private_folder_is_no_default_input_root(tmp_path: Path) -> None:
    private = tmp_path / "private"
    shared_folder = Settings.from_env({"BERT_RUNS_DIR": str(private)})
    assert shared_folder.runs_uri is None
    assert private.absolute() in shared_folder.local_path_roots
    on_store = Settings.from_env(
        {
            "BERT_RUNS_DIR": str(private),
            "BERT_RUNS_URI": "s3://runs/team",
            "BERT_STORE_CACHE_GB": "3",
        }
    )
    assert on_store.runs_uri == "s3://runs/team"
    assert on_store.store_cache_bytes == 3 * 1024**3
    assert private.absolute() not in on_store.local_path_roots


@pytest.mark.parametrize("uri", ["gs://runs/team", "s3://", "/data/runs", "s3://runs/x?y=1"])
def test_a_runs_uri_that_is_not_s3_is_refused_in_one_line(uri: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"BERT_RUNS_DIR": str(tmp_path), "BERT_RUNS_URI": uri})
    with pytest.raises(SettingsError, match="must be s3://bucket"):
        storage.open_runs_store(settings)
    assert storage.store_for(tmp_path) is None


class _StrippingProxy(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the real server without its conditional headers: a store
    that ignores If-None-Match and If-Match."""

    upstream: tuple[str, int]

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in {"if-match", "if-none-match"}
        }
        connection = http.client.HTTPConnection(*self.upstream)
        connection.request(self.command, self.path, body=body, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def careless_store(s3: S3Server) -> Iterator[str]:
    """The endpoint of a store that accepts conditional writes and ignores their conditions."""
    host, port = s3.endpoint.removeprefix("http://").split(":")
    handler = type("Proxy", (_StrippingProxy,), {"upstream": (host, int(port))})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_loopback_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_start_up_check_passes_a_store_with_conditional_writes(store_env: dict) -> None:
    assert check_conditional_writes(ObjectStore(store_env["BERT_RUNS_URI"])) is None


def test_a_store_that_ignores_conditional_writes_is_refused_at_worker_start_up(
    store_env: dict[str, str], careless_store: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **store_env,
        "AWS_ENDPOINT_URL": careless_store,
        "BERT_RUNS_DIR": str(tmp_path / "private"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_loopback_port()}",  # never reached
        "METRICS_PORT": str(free_loopback_port()),
        "METRICS_BIND_ADDRESS": "127.0.0.1",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "bert_finetune.cli", "worker", "controller"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode != 0
    reason = finished.stderr.strip().splitlines()[-1]
    assert "BERT_RUNS_URI" in reason and "ignores If-None-Match" in reason, finished.stderr


# -- commits and fencing ---------------------------------------------------------------------


def test_a_commit_lands_in_the_store_and_a_private_mirror_serves_it(workers: Workers) -> None:
    trainer, store = workers.new("trainer")
    commit(trainer, "exp-run-0-tiny", token(1), loss=0.25)
    keys = {info.key for info in store.objects.listing("")}
    blob = store.record("exp-run-0-tiny")
    assert blob is not None
    digest = digest_of(blob.data)
    assert f"exp-run-0-tiny/commits/{digest}/model.safetensors" in keys
    # Another worker, with nothing on its disk, sees the run complete and loads its files.
    reader, _ = workers.new("reader")
    assert [entry.run_id for entry in list_runs(reader) if entry.complete] == ["exp-run-0-tiny"]
    served = resolve_served_run(reader, "exp-run-0-tiny")
    assert (served.model_dir / "model.safetensors").read_bytes() == WEIGHTS + b"0.25"
    assert commit_digest(served.model_dir) == digest
    assert served.record.result.train_loss == 0.25


def test_two_attempts_racing_to_commit_the_stale_one_is_superseded(workers: Workers) -> None:
    """Attempt 1 lost its connection and attempt 2 took the run over on another trainer;
    whichever commits first, attempt 1's commit never lands."""
    first, store = workers.new("trainer-1")
    second, _ = workers.new("trainer-2")
    stale = RunDirectory(first, "exp-run-0-tiny")
    stale.claim(None, token(1), False, "identity")
    newer = RunDirectory(second, "exp-run-0-tiny")
    newer.claim(None, token(2), False, "identity")
    with pytest.raises(Superseded):
        stale.commit(save_model(b"stale"), record("exp-run-0-tiny", 0.9), 1)
    assert store.record("exp-run-0-tiny") is None  # nothing complete from the stale attempt
    newer.commit(save_model(b"newer"), record("exp-run-0-tiny", 0.1), 2)
    with pytest.raises(Superseded):
        stale.commit(save_model(b"stale"), record("exp-run-0-tiny", 0.9), 1)
    committed = stored_record(store, "exp-run-0-tiny")
    assert committed is not None and committed.result.train_loss == 0.1


def test_a_stale_overwrite_never_replaces_a_newer_commit(workers: Workers, tmp_path: Path) -> None:
    """Even past the fence check, a commit replaces only the run.json it set out to replace
    (If-Match on the ETag read at its claim): once another commit landed, it is refused."""
    trainer, store = workers.new("trainer")
    commit(trainer, "exp-run-0-tiny", token(1), loss=0.5)
    claim = store.claim("exp-run-0-tiny", FenceToken("overwrite", "overwrite-run", 1), True)

    def staged(name: str, loss: float) -> Path:
        folder = tmp_path / name
        save_model(name.encode())(folder)
        write_record(folder, record("exp-run-0-tiny", loss))
        return folder

    store.publish("exp-run-0-tiny", staged("v2", 0.2), claim)
    with pytest.raises(Refused, match="landed first"):
        store.publish("exp-run-0-tiny", staged("v3", 0.3), claim)
    committed = stored_record(store, "exp-run-0-tiny")
    assert committed is not None and committed.result.train_loss == 0.2
    # The replaced commit's files are gone; the refused one's upload is no commit's.
    blob = store.record("exp-run-0-tiny")
    assert blob is not None
    assert digest_of(blob.data) in store.objects.folders("exp-run-0-tiny/commits")
    first_commit = digest_of((trainer / "exp-run-0-tiny" / RUN_MANIFEST).read_bytes())
    assert first_commit not in store.objects.folders("exp-run-0-tiny/commits")


# A trainer whose process dies (SIGKILL, as the kernel's OOM killer or a lost node does) after
# its first file reached the store and before the rest did.
_KILLED_MID_UPLOAD = """
import os, signal, sys, threading
from pathlib import Path
from services.trainer.run_folder.fencing import AttemptToken
from services.trainer.run_folder.run_directory import RunDirectory
from shared import storage
from shared.storage.objects import ObjectStore
from shared.storage.run_store import RunStore
from tests.helpers.runs import sample_record

objects = ObjectStore(os.environ["BERT_RUNS_URI"])
upload, first_done, turns = objects.upload, threading.Event(), iter(range(100))

def upload_then_die(key, path):
    # Uploads run in parallel: the first one completes, the next one dies once it has.
    if next(turns) == 0:
        upload(key, path)
        first_done.set()
        return
    first_done.wait()
    os.kill(os.getpid(), signal.SIGKILL)

objects.upload = upload_then_die

def save(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(bytes(4096))

root = Path(sys.argv[1])
storage.bind(root, RunStore(objects, root))
run = RunDirectory(root, "exp-run-0-tiny")
run.claim(None, AttemptToken("experiment", "experiment-run", 1), False, "identity")
run.commit(save, sample_record("exp-run-0-tiny", ["negative", "positive"]), 1)
"""


def test_a_worker_killed_mid_upload_leaves_nothing_that_looks_complete(
    workers: Workers, store_env: dict[str, str], tmp_path: Path
) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_UPLOAD, str(tmp_path / "killed")],
        cwd=REPO_ROOT,
        env={**os.environ, **store_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    reader, store = workers.new("reader")
    assert store.objects.folders("exp-run-0-tiny/commits")  # half an upload is there
    assert store.record("exp-run-0-tiny") is None
    assert [entry.complete for entry in list_runs(reader)] == [False]
    with pytest.raises(ApplicationError) as refused:
        resolve_served_run(reader, "exp-run-0-tiny")
    assert refused.value.type == RUN_NOT_FOUND
    # The next attempt of the same workflow run commits, and clears the dead upload.
    commit(reader, "exp-run-0-tiny", token(2), loss=0.3)
    blob = store.record("exp-run-0-tiny")
    assert blob is not None
    assert store.objects.folders("exp-run-0-tiny/commits") == [digest_of(blob.data)]


def seal_checkpoint(run: RunDirectory, attempt: int, step: int) -> Path:
    folder = checkpoints.checkpoint_dir(run.path, attempt, step)
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "model.safetensors").write_bytes(WEIGHTS + str(step).encode())
    checkpoints.write_manifest(folder, step, attempt, "config-digest")
    return folder


def test_a_run_resumes_on_another_trainer_from_the_stores_newest_checkpoint(
    workers: Workers,
) -> None:
    first, store = workers.new("trainer-1")
    lost = RunDirectory(first, "exp-run-0-tiny")
    lost.claim(None, token(1), False, "identity")
    for step in (10, 20):
        lost.checkpoint_sealed(seal_checkpoint(lost, 1, step))
    lost.close_uploads(wait=True)
    # Only the newest is kept in the store, sealed (its manifest is there).
    assert store.checkpoints("exp-run-0-tiny", checkpoints.MANIFEST_NAME) == [
        "checkpoints/attempt-1/checkpoint-20"
    ]

    second, _ = workers.new("trainer-2")
    retry = RunDirectory(second, "exp-run-0-tiny")
    retry.claim(None, token(2), False, "identity")
    resumed = retry.resume_checkpoint(None, {"config-digest"})
    assert resumed is not None and (resumed.step, resumed.attempt) == (20, 1)
    assert resumed.path.is_relative_to(second)
    assert (resumed.path / "model.safetensors").read_bytes() == WEIGHTS + b"20"
    # A checkpoint of other work (another config digest) is never resumed from.
    assert retry.resume_checkpoint(None, {"another-digest"}) is None

    retry.commit(save_model(b"done"), record("exp-run-0-tiny", 0.1), 2)
    assert store.checkpoints("exp-run-0-tiny", checkpoints.MANIFEST_NAME) == []


# -- aliases ---------------------------------------------------------------------------------


def test_concurrent_promotions_of_one_alias_lose_no_update(workers: Workers) -> None:
    trainer, _ = workers.new("trainer")
    run_ids = [f"exp-run-{i}-tiny" for i in range(6)]
    for i, run_id in enumerate(run_ids):
        commit(trainer, run_id, token(1), loss=i / 10)
    controllers = [workers.new(f"controller-{i}")[0] for i in range(len(run_ids))]

    def promote(root: Path, run_id: str) -> BertPromoteOutput:
        return aliases.promote(root, run_id, "production", promoted_by=f"promotion-{run_id}")

    with ThreadPoolExecutor(len(run_ids)) as pool:
        outputs = list(pool.map(promote, controllers, run_ids))
    # Serialised, each promotion saw the one before it: one chain through every run.
    previous = {output.run_id: output.previous_run_id for output in outputs}
    assert list(previous.values()).count(None) == 1
    chain = [aliases.resolve_alias(trainer, "production")]
    while previous[chain[-1]] is not None:
        chain.append(previous[chain[-1]])
    assert sorted(chain) == sorted(run_ids)
    assert aliases.list_aliases(controllers[0]) == {"production": chain[0]}


# -- the inferencer's cache ------------------------------------------------------------------


def test_cold_requests_download_once_and_a_wiped_or_evicted_commit_comes_back(
    workers: Workers,
) -> None:
    trainer, _ = workers.new("trainer")
    commit(trainer, "exp-run-0-tiny", token(1), loss=0.1)
    commit(trainer, "exp-run-1-tiny", token(1), loss=0.2)
    # Room for one commit only: the second evicts the first.
    inferencer, store = workers.new("inferencer", cache_bytes=len(WEIGHTS) + 1024)
    downloads: list[str] = []
    download = store.objects.download

    def counted(key: str, path: Path) -> None:
        downloads.append(key)
        download(key, path)

    store.objects.download = counted  # type: ignore[method-assign]

    def serve(run_id: str) -> Path:
        return resolve_served_run(inferencer, run_id).model_dir

    with ThreadPoolExecutor(8) as pool:
        folders = set(pool.map(serve, ["exp-run-0-tiny"] * 8))
    assert len(folders) == 1 and len(downloads) == 2  # model and config, once
    (folder,) = folders
    serve("exp-run-1-tiny")
    assert not folder.exists()  # evicted
    assert (Path(serve("exp-run-0-tiny")) / "model.safetensors").is_file()
    assert len(downloads) == 6
    # Wiped while serving: the next request downloads it again.
    import shutil

    shutil.rmtree(inferencer / CACHE_DIR)
    assert (serve("exp-run-0-tiny") / "model.safetensors").read_bytes() == WEIGHTS + b"0.1"


def test_a_recommit_is_served_from_the_next_request(workers: Workers) -> None:
    trainer, _ = workers.new("trainer")
    inferencer, _ = workers.new("inferencer")
    commit(trainer, "exp-run-0-tiny", token(1), loss=0.1)
    before = resolve_served_run(inferencer, "exp-run-0-tiny")
    commit(trainer, "exp-run-0-tiny", token(1, "overwrite"), loss=0.7, overwrite=True)
    after = resolve_served_run(inferencer, "exp-run-0-tiny")
    assert after.record.result.train_loss == 0.7
    assert after.model_dir != before.model_dir
    assert (after.model_dir / "model.safetensors").read_bytes() == WEIGHTS + b"0.7"
    assert (after.model_dir / RUN_MANIFEST).is_file()
