"""One rank of a distributed attempt:
``torchrun ... -m services.trainer.distributed.rank_main FOLDER``.

Every rank runs the same ``training.fine_tune`` as a single-process worker, with a
``TorchRanks`` that lets only the leader (rank 0) touch the run folder and keeps the ranks
in step. The leader reports progress and its outcome through FOLDER (``rank_channel``); the
worker that started torchrun turns them into heartbeats and the activity's result.

A worker shutdown reaches the ranks as the FOLDER/stop file (or a SIGTERM from torchrun):
the ranks agree on it at the next step, seal a checkpoint and stop, like one process does.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType

import structlog

from services.trainer.distributed.process_guard import die_with_parent


def main() -> int:
    die_with_parent()  # torchrun: if it dies (with the worker), so does this rank
    folder = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    (folder / f"rank-{rank}.pid").write_text(str(os.getpid()), encoding="utf-8")
    terminated = _catch_sigterm()

    from services.trainer.distributed import rank_channel
    from services.trainer.run_folder.paths import LocalPathRoots
    from shared.logging import configure_logging, get_logger

    job = rank_channel.read_job(folder)
    # The leader speaks for every rank; the others log only what goes wrong.
    quiet = rank > 0 and job.log_level not in ("ERROR", "CRITICAL")
    configure_logging("WARNING" if quiet else job.log_level, job.log_format)
    structlog.contextvars.bind_contextvars(run_id=job.request.run_id, rank=rank)
    log = get_logger("services.trainer.distributed.rank_main")

    from services.trainer.distributed.ranks import FollowerReleased, TorchRanks
    from services.trainer.run_folder.run_directory import Ownership
    from services.trainer.training.fine_tune import fine_tune
    from services.trainer.training.stages import Attempt
    from services.trainer.training.stopping import (
        StopControl,
        TrainingCancelled,
        TrainingInterrupted,
    )
    from shared.storage import bind_from_env
    from shared.types import TrainingProgress

    _init_process_group(job.request.config.use_gpu)
    ranks = TorchRanks(
        rank,
        world_size,
        local_shutdown=lambda: terminated[0] or rank_channel.shutdown_requested(folder),
    )
    progress = TrainingProgress(run_id=job.request.run_id, attempt=job.attempt)
    reporter = (
        rank_channel.ProgressRelay(folder, progress)
        if ranks.is_leader
        else rank_channel.SilentProgress(progress)
    )
    # Cancellation never reaches a rank as a request: the worker kills the ranks instead.
    stop = StopControl(cancel_requested=lambda: False, shutdown_requested=ranks.shutdown_agreed)
    stopped_owners = set(job.stopped_owners)
    attempt = Attempt(
        number=job.attempt,
        resume_hint=job.resume_hint,
        owner=(
            Ownership(job.workflow_id, lambda owner: owner not in stopped_owners)
            if job.workflow_id
            else None
        ),
        checkpoint_interval_seconds=job.checkpoint_interval_seconds,
        workflow_run_id=job.workflow_run_id,
        path_roots=LocalPathRoots.of(map(Path, job.local_path_roots))
        if job.local_path_roots
        else None,
    )
    log.info("training.rank_started", world_size=world_size, attempt=job.attempt, pid=os.getpid())
    # With BERT_RUNS_URI (inherited from the worker), the ranks read and commit to the store.
    bind_from_env(Path(job.runs_root))
    try:
        result = fine_tune(job.request, Path(job.runs_root), reporter, stop, attempt, ranks=ranks)
        outcome = rank_channel.RankOutcome(status="succeeded", result=result)
    except FollowerReleased:
        return 0
    except TrainingCancelled:
        outcome = rank_channel.RankOutcome(status="cancelled")
    except TrainingInterrupted as err:
        outcome = rank_channel.RankOutcome(status="interrupted", message=str(err))
    except Exception as err:
        log.exception("training.rank_failed")
        if not ranks.is_leader:
            return 1
        outcome = rank_channel.RankOutcome.failed(err)
    if ranks.is_leader:
        rank_channel.write_outcome(folder, outcome)
    _close_process_group()
    return 0


def _catch_sigterm() -> list[bool]:
    """torchrun forwards its own SIGTERM to the ranks: treat it as a worker shutdown."""
    terminated = [False]

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        terminated[0] = True

    signal.signal(signal.SIGTERM, on_sigterm)
    return terminated


def _init_process_group(use_gpu: bool) -> None:
    """Before the Trainer exists, so the leader can share its decisions; the Trainer then
    trains in this group. Gloo carries those small CPU messages; NCCL the GPU gradients."""
    import torch
    import torch.distributed as dist

    if use_gpu and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")


def _close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
