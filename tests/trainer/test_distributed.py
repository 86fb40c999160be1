"""One run over two processes (torchrun, DDP on gloo) trains like one process.

Real torchrun, real ranks, real Trainer on the tiny BERT; the activity context comes from
``ActivityEnvironment`` so heartbeats run as in a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from services.trainer.activities.progress import ProgressReporter
from services.trainer.distributed import launcher
from services.trainer.distributed.launcher import DistributedTraining, ranks_for, resolve_processes
from services.trainer.distributed.rank_channel import EVENTS_FILE, EventReader, ProgressRelay
from services.trainer.run_folder import ownership
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.run_folder.run_directory import Ownership
from services.trainer.training.fine_tune import fine_tune
from services.trainer.training.stages import Attempt
from services.trainer.training.stopping import StopControl
from shared.runs import is_complete
from shared.settings import Settings, SettingsError
from shared.types import BertFineTuneRequest, BertFineTuneResult, TrainingProgress
from tests.conftest import TEST_LOCAL_PATH_ROOTS
from tests.durability.harness import REPO_ROOT, predicts_sentiment
from tests.tiny import sentiment_rows, write_csv

ROOTS = LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)


class LossCurve(ProgressReporter):
    """The activity's reporter, also keeping every logged loss by step."""

    def __init__(self, run_id: str) -> None:
        super().__init__(TrainingProgress(run_id=run_id))
        self.losses: dict[int, float] = {}

    def update(self, **fields: Any) -> None:
        super().update(**fields)
        if fields.get("loss") is not None:
            self.losses[self.progress.global_step] = float(fields["loss"])


def _request(model: Path, data: tuple[Path, Path]) -> BertFineTuneRequest:
    return BertFineTuneRequest.model_validate(
        {
            "run_id": "ddp-run-0-tiny",
            "config": {
                "model_name": str(model),
                "train_file": str(data[0]),
                "validation_file": str(data[1]),
                "num_epochs": 2,
                "batch_size": 8,
                "learning_rate": 0.005,
                "max_seq_length": 16,
                "use_gpu": False,
                "checkpoint_steps": 5,
                # The length-grouped sampler draws its order from the process's own random
                # state, which differs between layouts; this test compares the layouts over
                # the same batches, which the seeded random order gives.
                "group_by_length": False,
            },
        }
    )


def _train(
    train: Any,
    model: Path,
    data: tuple[Path, Path],
    runs_root: Path,
    attempt: Attempt | None = None,
) -> tuple[BertFineTuneResult, dict[int, float]]:
    request = _request(model, data)
    reporter = LossCurve(request.run_id)
    stop = StopControl(lambda: False, lambda: False)

    def run() -> BertFineTuneResult:
        with reporter:
            return train(request, runs_root, reporter, stop, attempt or Attempt(path_roots=ROOTS))

    return ActivityEnvironment().run(run), reporter.losses


def _data(root: Path) -> tuple[Path, Path]:
    return (
        write_csv(root / "train.csv", sentiment_rows(96, seed=3, string_labels=True)),
        write_csv(root / "validation.csv", sentiment_rows(24, seed=4, string_labels=True)),
    )


def test_two_processes_train_the_same_loss_curve_as_one(tiny_model: Path, tmp_path: Path) -> None:
    data = _data(tmp_path)
    one, one_curve = _train(fine_tune, tiny_model, data, tmp_path / "one")
    two, two_curve = _train(DistributedTraining(2), tiny_model, data, tmp_path / "two")

    # Same optimizer steps over the same batches (each rank takes half of every batch)...
    assert sorted(two_curve) == sorted(one_curve) == list(range(1, 25))
    # ...so the same losses, up to dropout, whose masks differ between the layouts.
    for step, loss in one_curve.items():
        assert two_curve[step] == pytest.approx(loss, abs=0.03), f"step {step}"
    assert two.train_loss == pytest.approx(one.train_loss, abs=0.01)
    assert two.eval_metrics["eval_loss"] == pytest.approx(one.eval_metrics["eval_loss"], abs=0.02)
    assert two.num_train_samples == one.num_train_samples == 96
    # The leader committed a complete run a user can load.
    assert is_complete(Path(two.model_dir))
    assert not (Path(two.model_dir) / "checkpoints").exists()
    assert predicts_sentiment(two.model_dir) == predicts_sentiment(one.model_dir)


@pytest.mark.parametrize(
    ("batch_size", "processes", "ranks"), [(16, 4, 4), (16, 3, 2), (5, 2, 1), (6, 8, 6), (1, 2, 1)]
)
def test_ranks_split_the_batch_evenly(batch_size: int, processes: int, ranks: int) -> None:
    assert ranks_for(batch_size, processes) == ranks


def test_processes_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env({}).trainer_processes == 1
    assert Settings.from_env({"BERT_TRAINER_PROCESSES": "4"}).trainer_processes == 4
    assert Settings.from_env({"BERT_TRAINER_PROCESSES": "Auto"}).trainer_processes == "auto"
    # No GPU here: "auto" means one process, today's path.
    assert resolve_processes("auto") == 1
    for bad in ("0", "two"):
        with pytest.raises(SettingsError, match="BERT_TRAINER_PROCESSES"):
            Settings.from_env({"BERT_TRAINER_PROCESSES": bad})


def test_a_folder_another_running_workflow_owns_is_refused_by_the_leader(
    tiny_model: Path, tmp_path: Path
) -> None:
    data = _data(tmp_path)
    runs_root = tmp_path / "runs"
    run_dir = runs_root / _request(tiny_model, data).run_id
    run_dir.mkdir(parents=True)
    (run_dir / ownership.OWNER_FILE).write_text(json.dumps({"workflow_id": "wf-a"}))
    asked: list[str] = []

    def is_running(workflow_id: str) -> bool:
        asked.append(workflow_id)
        return True

    attempt = Attempt(owner=Ownership("wf-b", is_running), path_roots=ROOTS)
    with pytest.raises(ApplicationError) as refused:
        _train(DistributedTraining(2), tiny_model, data, runs_root, attempt)

    # The worker asked Temporal about the owner; the leader refused with the usual error.
    assert asked == ["wf-a"]
    assert refused.value.type == "InvalidConfig" and refused.value.non_retryable
    assert "being trained by workflow 'wf-a'" in refused.value.message
    assert ownership.owner_of(run_dir) == "wf-a"
    assert not (run_dir / "checkpoints").exists()


def test_a_process_armed_by_the_guard_dies_with_its_parent(tmp_path: Path) -> None:
    """The worker → torchrun → rank chain: SIGKILL the parent, the child goes too."""
    child_pid = tmp_path / "child.pid"
    child = tmp_path / "child.py"
    child.write_text(
        "import os, sys, time\n"
        "from services.trainer.distributed.process_guard import die_with_parent\n"
        "die_with_parent()\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    parent_script = tmp_path / "parent.py"
    parent_script.write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, str(parent_script), str(child), str(child_pid)], cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while not child_pid.exists() or not child_pid.read_text():
            assert parent.poll() is None and time.monotonic() < deadline, "no child started"
            time.sleep(0.1)
        pid = int(child_pid.read_text())
        assert _alive(pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_progress_lines_are_read_once_and_only_when_complete(tmp_path: Path) -> None:
    relay = ProgressRelay(tmp_path, TrainingProgress(run_id="r"))
    reader = EventReader(tmp_path)
    relay.update(phase="training", global_step=3)
    relay.heartbeat_now()
    with (tmp_path / EVENTS_FILE).open("a") as events:
        events.write('{"update": {"global_st')  # a leader killed mid-line
    assert reader.new_events() == [
        {"update": {"phase": "training", "global_step": 3}},
        {"heartbeat": True},
    ]
    assert reader.new_events() == []
    assert relay.progress.global_step == 3
    relay.close()


def test_launch_folders_of_killed_workers_are_removed_once_stale() -> None:
    stale = Path(tempfile.mkdtemp(prefix=f"{launcher.FOLDER_PREFIX}test-stale-"))
    fresh = Path(tempfile.mkdtemp(prefix=f"{launcher.FOLDER_PREFIX}test-fresh-"))
    (stale / "rank-0.pid").write_text("999999999")  # no such process
    old = time.time() - launcher.STALE_FOLDER_SECONDS - 60
    os.utime(stale, (old, old))
    try:
        launcher._remove_stale_folders()
        assert not stale.exists()
        assert fresh.exists()  # perhaps an attempt whose ranks are still starting
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)
