"""Entry points of the trainer task queue's workers.

``bert-finetune worker trainer`` trains (GPU pods); ``bert-finetune worker controller`` runs
only workflows and local activities (a small CPU pod), so experiments, sweeps and
promotions make progress while every trainer is busy or scaled to zero. Both come from one
factory and register the same workflows and local activities (listed once, in
``services/trainer/registry.py``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from services.trainer.activities.export import ExportActivities
from services.trainer.activities.fine_tune import TemporalGateway, Trainer, TrainingActivities
from services.trainer.activities.progress import (
    HISTORY_CHECK_EVERY_SIGNALS,
    HISTORY_EVENTS_BUDGET,
    SIGNAL_INTERVAL_SECONDS,
)
from services.trainer.distributed.launcher import DistributedTraining, resolve_processes
from services.trainer.registry import TRAINER_WORKFLOWS, orchestration_activities
from services.trainer.run_folder import checkpoints
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.tracking.trackers import TrackingConfig
from services.trainer.training.fine_tune import fine_tune
from shared.service import run_worker_service
from shared.settings import DEFAULT_PHASE_TIMEOUTS_SECONDS, Settings, SettingsError
from shared.types import INFERENCE_TASK_QUEUE

_DEFAULT_PHASE_TIMEOUTS = {
    phase: timedelta(seconds=seconds) for phase, seconds in DEFAULT_PHASE_TIMEOUTS_SECONDS.items()
}
# The SDK sends at most one heartbeat per this interval; it bounds how fast a cancel lands.
HEARTBEAT_THROTTLE = timedelta(seconds=5)


def build_trainer_worker(
    client: Client,
    *,
    task_queue: str,
    runs_root: Path,
    max_concurrent_activities: int = 1,
    graceful_shutdown: timedelta = timedelta(seconds=30),
    progress_signal_interval: timedelta = timedelta(seconds=SIGNAL_INTERVAL_SECONDS),
    progress_history_budget: int = HISTORY_EVENTS_BUDGET,
    progress_history_check_every: int = HISTORY_CHECK_EVERY_SIGNALS,
    phase_timeouts: Mapping[str, timedelta] | None = None,
    checkpoint_interval: timedelta = timedelta(seconds=checkpoints.DEFAULT_INTERVAL_SECONDS),
    local_path_roots: Sequence[Path] | None = None,
    no_remote_activities: bool = False,
    processes_per_run: int = 1,
    log_level: str = "INFO",
    log_format: str = "auto",
    tracking: TrackingConfig = TrackingConfig(),
    inference_task_queue: str = INFERENCE_TASK_QUEUE,
    gate_queue_timeout: timedelta = timedelta(minutes=10),
) -> Worker:
    """A worker of the trainer task queue: a trainer, or with ``no_remote_activities`` a
    controller.

    Args:
        task_queue: queue polled for the workflows in ``registry.TRAINER_WORKFLOWS`` and, unless
            ``no_remote_activities``, ``fine_tune_bert`` and ``export_run``.
        runs_root: the shared runs volume (``BERT_RUNS_DIR``).
        max_concurrent_activities: runs trained at once; 1 per GPU is the safe default.
        graceful_shutdown: how long a SIGTERM'd worker lets training seal a checkpoint
            before the SDK cancels it; keep it below the pod's termination grace period.
        progress_signal_interval: the most a ``progress`` query may lag a training run
            (phase changes and checkpoints are signalled at once). Each signal costs about
            four history events, so a shorter interval trades history size for freshness.
        progress_history_budget: past this many events in the receiving workflow's history,
            only phase and checkpoint changes are signalled (Temporal ends a workflow at
            51,200 events); the history length is read every
            ``progress_history_check_every`` signals.
        phase_timeouts: per phase of an attempt (``loading_data``, ``loading_model``,
            ``tokenizing``, ``training``, ``evaluating``, ``saving``), the longest it may go
            without progress (a step, a batch) before it is taken as hung: heartbeats stop
            (Temporal retries the run elsewhere from its last checkpoint) and liveness
            fails so the pod restarts. Default: ``DEFAULT_PHASE_TIMEOUTS_SECONDS``; an
            empty mapping disables the watchdog.
        local_path_roots: the folders a config's local paths (``train_file``,
            ``validation_file``, a local ``model_name`` or ``dataset_name``) may name, after
            symlinks (``BERT_LOCAL_PATH_ROOTS``); default the working directory and
            ``runs_root``.
        checkpoint_interval: the default checkpoint policy (runs without checkpoint_steps):
            the most training time a crash can lose, stretched when saving would otherwise
            cost more than 5% of training time (docs/durability.md).
        no_remote_activities: a controller: poll only workflow tasks and run local
            activities, never training (it imports no torch and needs no GPU).
        processes_per_run: processes (PyTorch DDP ranks, one per GPU) that train each run
            together, launched with torchrun; 1 trains in this process. The ranks log with
            ``log_level`` and ``log_format`` (docs/distributed.md).
        tracking: where each run's params, curves and confusion matrices go (an MLflow
            server, TensorBoard event files in the run folder, or nowhere).
        inference_task_queue: the inference workers' queue, where a gated promotion's
            evaluation runs (it loads models: never on this worker).
        gate_queue_timeout: how long that evaluation waits for an inferencer to pick it up
            before the promotion is refused with ``PromotionRefused`` (the alias unchanged).
    """
    train: Trainer = (
        fine_tune
        if processes_per_run == 1
        else DistributedTraining(processes_per_run, log_level=log_level, log_format=log_format)
    )
    activities = TrainingActivities(
        runs_root,
        TemporalGateway(client, asyncio.get_running_loop()),
        progress_signal_interval=progress_signal_interval.total_seconds(),
        progress_history_budget=progress_history_budget,
        progress_history_check_every=progress_history_check_every,
        phase_timeouts={
            phase: limit.total_seconds()
            for phase, limit in (
                phase_timeouts if phase_timeouts is not None else _DEFAULT_PHASE_TIMEOUTS
            ).items()
        },
        checkpoint_interval_seconds=checkpoint_interval.total_seconds(),
        local_path_roots=LocalPathRoots.of(local_path_roots) if local_path_roots else None,
        train=train,
        tracking=tracking,
    )
    training: list[Callable[..., Any]] = []
    if not no_remote_activities:
        training = [activities.fine_tune_bert, ExportActivities(runs_root).export_run]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=TRAINER_WORKFLOWS,
        activities=[
            *training,
            *orchestration_activities(
                runs_root, tracking, inference_task_queue, gate_queue_timeout
            ),
        ],
        no_remote_activities=no_remote_activities,
        activity_executor=ThreadPoolExecutor(
            max_workers=max_concurrent_activities, thread_name_prefix="fine-tune"
        ),
        max_concurrent_activities=max_concurrent_activities,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        graceful_shutdown_timeout=graceful_shutdown,
    )


# GPUs the pod was given (the chart sets it from gpu.count when gpu.enabled): a trainer whose
# torch sees fewer must not poll, or it would train on the CPU without anyone noticing.
EXPECTED_GPUS_ENV = "BERT_TRAINER_EXPECTED_GPUS"


def _torch_gpus() -> tuple[int, str | None]:
    """Visible CUDA devices, and torch's CUDA version (None for a CPU build of torch)."""
    import torch

    return torch.cuda.device_count(), torch.version.cuda


def missing_gpus(
    expected: int, probe: Callable[[], tuple[int, str | None]] = _torch_gpus
) -> str | None:
    """Why the trainer must stay not ready (one line with the fix), or None when torch sees
    at least the ``expected`` GPUs."""
    if expected <= 0:
        return None
    visible, cuda = probe()
    if visible >= expected:
        return None
    asked = f"the pod asks for {expected} GPU(s) ({EXPECTED_GPUS_ENV}, the chart's gpu.count)"
    if cuda is None:
        return (
            f"{asked} but this image's torch is a CPU build: use a CUDA trainer image "
            "(tag -cu128 or -cu130), or set gpu.enabled=false to train on the CPU"
        )
    return (
        f"{asked} but torch (CUDA {cuda}) sees {visible}: the node's NVIDIA driver is missing "
        "or too old for this image (-cu128 needs driver 570+, -cu130 580+; `nvidia-smi` on "
        "the node shows it), or no device was mounted (runtimeClassName, device plugin)"
    )


def _expected_gpus() -> int:
    raw = os.environ.get(EXPECTED_GPUS_ENV, "").strip()
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise SettingsError(f"{EXPECTED_GPUS_ENV}={raw!r} is not a whole number") from None


async def run_trainer(settings: Settings) -> None:
    expected = _expected_gpus()
    await run_worker_service(
        "trainer",
        settings,
        settings.trainer_metrics_port,
        lambda client: build_trainer_worker(
            client,
            task_queue=settings.training_task_queue,
            runs_root=settings.runs_dir,
            max_concurrent_activities=settings.trainer_max_concurrent_activities,
            graceful_shutdown=timedelta(seconds=settings.graceful_shutdown_seconds),
            progress_signal_interval=timedelta(seconds=settings.progress_signal_interval_seconds),
            phase_timeouts={
                phase: timedelta(seconds=seconds)
                for phase, seconds in settings.phase_timeouts_seconds.items()
            },
            checkpoint_interval=timedelta(seconds=settings.checkpoint_interval_seconds),
            local_path_roots=settings.local_path_roots,
            processes_per_run=resolve_processes(settings.trainer_processes),
            log_level=settings.log_level,
            log_format=settings.log_format,
            tracking=TrackingConfig.from_settings(settings),
            inference_task_queue=settings.inference_task_queue,
            gate_queue_timeout=timedelta(seconds=settings.gate_queue_timeout_seconds),
        ),
        precondition=lambda: missing_gpus(expected),
    )


async def run_controller(settings: Settings) -> None:
    await run_worker_service(
        "controller",
        settings,
        settings.controller_metrics_port,
        lambda client: build_trainer_worker(
            client,
            task_queue=settings.training_task_queue,
            runs_root=settings.runs_dir,
            graceful_shutdown=timedelta(seconds=settings.graceful_shutdown_seconds),
            no_remote_activities=True,
            # Discarding a run cancelled between attempts also closes its MLflow run.
            tracking=TrackingConfig.from_settings(settings),
            inference_task_queue=settings.inference_task_queue,
            gate_queue_timeout=timedelta(seconds=settings.gate_queue_timeout_seconds),
        ),
    )
