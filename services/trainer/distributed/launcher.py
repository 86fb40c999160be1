"""One run on every GPU of the pod: the worker's side of a distributed attempt.

``DistributedTraining`` has the shape of ``training.fine_tune``, so the activity calls
either one. It writes the attempt's job into a private folder, starts torchrun (through
``process_guard``, so the ranks die with the worker) with one ``rank_main`` per process, and
until the ranks exit it:
- feeds the leader's progress lines to the activity's ``ProgressReporter`` (heartbeats, the
  progress signal, the stall watchdog) and to this worker's Prometheus metrics;
- on a worker shutdown, asks the ranks to seal a checkpoint and stop (as one process does);
- on a cancel (or a superseded attempt), kills them at once: their partial output is
  discarded anyway, and a dead process writes nothing into a folder a retry now owns.
Then it returns the leader's result or raises its error, exactly as ``fine_tune`` would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from temporalio.exceptions import ApplicationError

from services.trainer.activities.progress import ProgressReporter
from services.trainer.distributed.process_guard import EXPECTED_PARENT_ENV
from services.trainer.distributed.rank_channel import (
    EventReader,
    RankJob,
    RankOutcome,
    read_outcome,
    request_shutdown,
    write_job,
)
from services.trainer.run_folder import ownership
from services.trainer.training.fine_tune import fine_tune
from services.trainer.training.stages import Attempt
from services.trainer.training.stopping import StopControl, TrainingCancelled, TrainingInterrupted
from shared import metrics
from shared.logging import get_logger
from shared.runs import resolve_run_dir
from shared.types import BertFineTuneRequest, BertFineTuneResult

log = get_logger(__name__)

POLL_SECONDS = 0.2
# After the leader has reported, how long the other ranks get to exit on their own.
EXIT_GRACE_SECONDS = 30.0
# How long killed ranks and torchrun get to be gone before the attempt carries on.
KILL_WAIT_SECONDS = 15.0
RANK_MODULE = "services.trainer.distributed.rank_main"
FOLDER_PREFIX = "bert-ddp-"
# A launch folder this old with no rank alive belongs to a worker that was killed.
STALE_FOLDER_SECONDS = 600.0
# Retryable: the ranks died without a result (killed, out of memory, a crash in torch).
DISTRIBUTED_TRAINING_FAILED = "DistributedTrainingFailed"


def resolve_processes(setting: int | Literal["auto"]) -> int:
    """``BERT_TRAINER_PROCESSES``: a number, or "auto" for one process per visible GPU."""
    if setting != "auto":
        return setting
    import torch

    return max(1, torch.cuda.device_count())


def ranks_for(batch_size: int, processes: int) -> int:
    """The most processes, up to ``processes``, that split ``batch_size`` evenly.

    ``batch_size`` is the run's batch per optimizer step whatever the pod: each rank takes an
    equal share, so a run trains the same on one GPU or eight (and stays reusable).
    """
    return max(n for n in range(1, processes + 1) if batch_size % n == 0)


def torchrun_command(folder: Path, ranks: int) -> list[str]:
    """torchrun for one node, ``ranks`` processes, no restarts (Temporal retries attempts),
    its rendezvous on a free loopback port."""
    return [
        sys.executable,
        "-m",
        "services.trainer.distributed.process_guard",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={ranks}",
        "--max-restarts=0",
        "--module",
        RANK_MODULE,
        str(folder),
    ]


class DistributedTraining:
    """``fine_tune`` over ``processes`` processes on this node (PyTorch DDP under torchrun)."""

    def __init__(self, processes: int, log_level: str = "INFO", log_format: str = "auto") -> None:
        self.processes = processes
        self._log_level = log_level
        self._log_format = log_format

    def __call__(
        self,
        request: BertFineTuneRequest,
        runs_root: Path,
        reporter: ProgressReporter,
        stop: StopControl,
        attempt: Attempt | None = None,
    ) -> BertFineTuneResult:
        attempt = attempt or Attempt()
        ranks = ranks_for(request.config.batch_size, self.processes)
        if ranks == 1:
            log.info(
                "training.single_process",
                batch_size=request.config.batch_size,
                processes=self.processes,
            )
            return fine_tune(request, runs_root, reporter, stop, attempt)
        _remove_stale_folders()
        folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{request.run_id[:60]}-"))
        process: subprocess.Popen[bytes] | None = None
        try:
            write_job(folder, self._job(request, runs_root, attempt))
            stop.check()
            log.info("training.launching", processes=ranks, folder=str(folder))
            process = subprocess.Popen(
                torchrun_command(folder, ranks),
                env={**os.environ, EXPECTED_PARENT_ENV: str(os.getpid())},
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches the worker, which decides.
                start_new_session=True,
            )
            outcome = _supervise(process, folder, reporter, stop, request.config.batch_size)
        finally:
            if process is not None:
                _end(process, folder)
            shutil.rmtree(folder, ignore_errors=True)
        return _result(outcome)

    def _job(self, request: BertFineTuneRequest, runs_root: Path, attempt: Attempt) -> RankJob:
        owner = attempt.owner
        return RankJob(
            request=request,
            runs_root=str(runs_root),
            attempt=attempt.number,
            resume_hint=attempt.resume_hint,
            workflow_id=owner.workflow_id if owner else None,
            workflow_run_id=attempt.workflow_run_id,
            local_path_roots=[str(root) for root in attempt.path_roots.roots]
            if attempt.path_roots
            else [],
            stopped_owners=_stopped_owners(runs_root, request.run_id, attempt),
            checkpoint_interval_seconds=attempt.checkpoint_interval_seconds,
            log_level=self._log_level,
            log_format=self._log_format,
        )


def _stopped_owners(runs_root: Path, run_id: str, attempt: Attempt) -> list[str]:
    """The run folder's current owner when it is another workflow that no longer runs.

    The ranks cannot ask Temporal, so the worker asks now: the leader may take the folder
    over from this owner only; any other owner it finds is treated as running (refused).
    """
    if attempt.owner is None:
        return []
    try:
        current = ownership.owner_of(resolve_run_dir(runs_root, run_id))
    except ApplicationError:
        return []  # a bad run id: the leader refuses it with the usual error
    if current is None or current == attempt.owner.workflow_id:
        return []
    return [] if attempt.owner.is_running(current) else [current]


def _supervise(
    process: subprocess.Popen[bytes],
    folder: Path,
    reporter: ProgressReporter,
    stop: StopControl,
    batch_size: int,
) -> RankOutcome:
    events = EventReader(folder)
    mirror = _MetricsMirror(batch_size)
    shutdown_sent = False
    reported_at: float | None = None
    while process.poll() is None:
        _relay(events, reporter, mirror)
        if stop.cancel_requested():
            log.info("training.ranks_stopping", reason="cancelled")
            raise TrainingCancelled()
        if stop.shutdown_requested() and not shutdown_sent:
            log.info("training.ranks_stopping", reason="worker shutdown")
            request_shutdown(folder)
            shutdown_sent = True
        if reported_at is None and read_outcome(folder) is not None:
            reported_at = time.monotonic()
        if reported_at is not None and time.monotonic() - reported_at > EXIT_GRACE_SECONDS:
            log.warning("training.ranks_not_exiting", grace_seconds=EXIT_GRACE_SECONDS)
            break
        time.sleep(POLL_SECONDS)
    _relay(events, reporter, mirror)
    outcome = read_outcome(folder)
    if outcome is None:
        raise ApplicationError(
            f"distributed training ended (torchrun exit code {process.poll()}) without a "
            "result; the ranks' own log lines above say why. The attempt is retried from "
            "its last checkpoint",
            type=DISTRIBUTED_TRAINING_FAILED,
        )
    return outcome


def _relay(events: EventReader, reporter: ProgressReporter, mirror: _MetricsMirror) -> None:
    for event in events.new_events():
        if "update" in event:
            fields = event["update"]
            mirror.update(fields)
            reporter.update(**fields)
        elif event.get("heartbeat"):
            reporter.heartbeat_now()
        elif event.get("signal"):
            reporter.signal_soon()
        elif event.get("progressed"):
            reporter.progressed()


class _MetricsMirror:
    """This worker's training metrics, from the leader's progress (the ranks serve none)."""

    def __init__(self, batch_size: int) -> None:
        self._batch_size = batch_size
        self._step: int | None = None
        self._checkpoint: str | None = None

    def update(self, fields: dict[str, Any]) -> None:
        if "global_step" in fields:
            step = int(fields["global_step"])
            if self._step is not None and step > self._step:
                metrics.STEPS.inc(step - self._step)
                metrics.SAMPLES.inc((step - self._step) * self._batch_size)
            self._step = step
        if fields.get("loss") is not None:
            metrics.TRAINING_LOSS.set(float(fields["loss"]))
        if fields.get("eval_accuracy") is not None:
            metrics.EVAL_ACCURACY.set(float(fields["eval_accuracy"]))
        if fields.get("resumed_from_step") is not None:
            metrics.RUNS_RESUMED.inc()
        checkpoint = fields.get("latest_checkpoint")
        if checkpoint and checkpoint != self._checkpoint and "resumed_from_step" not in fields:
            metrics.CHECKPOINTS.inc()
        if checkpoint:
            self._checkpoint = checkpoint


def _result(outcome: RankOutcome) -> BertFineTuneResult:
    if outcome.status == "succeeded" and outcome.result is not None:
        metrics.SAMPLES_PER_SECOND.set(outcome.result.train_samples_per_second)
        return outcome.result
    if outcome.status == "cancelled":
        raise TrainingCancelled()
    if outcome.status == "interrupted":
        raise TrainingInterrupted(outcome.message)
    raise ApplicationError(
        outcome.message,
        type=outcome.error_type or DISTRIBUTED_TRAINING_FAILED,
        non_retryable=outcome.non_retryable,
    )


def _end(process: subprocess.Popen[bytes], folder: Path) -> None:
    """Leave no process behind: kill the ranks still running, then torchrun."""
    if process.poll() is None:
        for pid in _rank_pids(folder):
            _kill(pid)
        try:
            process.wait(KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()  # the ranks follow it (parent-death signal)
            process.wait()
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while _rank_pids(folder) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


def _remove_stale_folders() -> None:
    """Launch folders of attempts whose worker was killed (nothing ran its cleanup); they
    would pile up in a pod whose container restarts keep its /tmp volume."""
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            age = time.time() - folder.stat().st_mtime
        except OSError:
            continue
        if age > STALE_FOLDER_SECONDS and not _rank_pids(folder):
            shutil.rmtree(folder, ignore_errors=True)


def _rank_pids(folder: Path) -> list[int]:
    """The ranks of this attempt still alive (each wrote ``rank-N.pid`` when it started)."""
    alive = []
    for pid_file in folder.glob("rank-*.pid"):
        try:
            pid = int(pid_file.read_text(encoding="utf-8"))
            # The pid is ours only while it still runs rank_main and is not a zombie.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1]
        except (OSError, ValueError):
            continue
        if RANK_MODULE.encode() in cmdline and state.split()[0] != "Z":
            alive.append(pid)
    return alive


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
