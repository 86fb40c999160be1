"""The processes that train one run together, and how they keep in step.

One process (the default) is ``SINGLE_PROCESS``: it decides, trains and writes, as always.
Under torchrun (``BERT_TRAINER_PROCESSES`` > 1) every rank runs the same training stages
with a ``TorchRanks``: rank 0, the leader, makes every decision that touches the run folder
(reuse, ownership claim, which checkpoint to resume, sealing, the final commit) and shares
the outcome; the other ranks only train and evaluate. Everything that changes what the
Trainer does next (stop, save, evaluate) is agreed by all ranks at the same step, because a
rank that leaves the loop alone leaves the others waiting in a collective forever.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from transformers import TrainerCallback

T = TypeVar("T")


class FollowerReleased(Exception):
    """The leader ended the attempt before training (it failed, or reused finished work);
    this rank has nothing left to do."""


@dataclass(frozen=True)
class _LeaderFailed:
    """Sent in place of a decision when the leader's decision raised."""


class SingleProcess:
    """Today's path: one process decides, trains and writes."""

    rank = 0
    world_size = 1
    is_leader = True

    def decide(self, choose: Callable[[], T]) -> T:
        return choose()

    def sealing(self, seal: TrainerCallback) -> list[TrainerCallback]:
        return [seal]

    def agreement(self) -> list[TrainerCallback]:
        return []


SINGLE_PROCESS = SingleProcess()


class TorchRanks:
    """One rank of a run trained by ``world_size`` processes in an initialised process group."""

    def __init__(self, rank: int, world_size: int, local_shutdown: Callable[[], bool]) -> None:
        self.rank = rank
        self.world_size = world_size
        self.is_leader = rank == 0
        self._agreement = StepAgreementCallback(local_shutdown)

    def decide(self, choose: Callable[[], T]) -> T:
        """Run ``choose`` on the leader and hand its result to every rank.

        A decision that raises on the leader releases the other ranks (``FollowerReleased``)
        and raises on the leader, which reports it to the worker.
        """
        import torch.distributed as dist

        if self.is_leader:
            try:
                value: Any = choose()
            except BaseException:
                dist.broadcast_object_list([_LeaderFailed()], src=0)
                raise
            dist.broadcast_object_list([value], src=0)
            return value
        received: list[Any] = [None]
        dist.broadcast_object_list(received, src=0)
        if isinstance(received[0], _LeaderFailed):
            raise FollowerReleased()
        return received[0]

    def shutdown_agreed(self) -> bool:
        """Whether the ranks agreed (at the last step end) to stop for a worker shutdown."""
        return self._agreement.shutdown

    def sealing(self, seal: TrainerCallback) -> list[TrainerCallback]:
        """In place of the seal callback: wait for every rank's files, then the leader seals."""
        barrier = CheckpointBarrierCallback()
        return [barrier, seal] if self.is_leader else [barrier]

    def agreement(self) -> list[TrainerCallback]:
        """Goes after every other callback, so it sees every local decision of the step."""
        return [self._agreement]


class StepAgreementCallback(TrainerCallback):
    """At every step end, the ranks agree on stopping, saving, evaluating and logging.

    Each flag becomes true on every rank when it is true on any: a timed checkpoint decided
    by one rank's clock, or a shutdown seen first by one rank, happens on all of them at the
    same step. ``shutdown`` is what the ranks' stop control reads; the stop callback, which
    runs before this one, acts on it one step later on every rank alike.
    """

    def __init__(self, local_shutdown: Callable[[], bool]) -> None:
        self._local_shutdown = local_shutdown
        self.shutdown = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch
        import torch.distributed as dist

        flags = torch.tensor(
            [
                self._local_shutdown(),
                control.should_training_stop,
                control.should_save,
                control.should_evaluate,
                control.should_log,
            ],
            dtype=torch.int32,
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        shutdown, stop, save, evaluate, log = (bool(flag) for flag in flags.tolist())
        self.shutdown = self.shutdown or shutdown
        control.should_training_stop = stop
        control.should_save = save
        control.should_evaluate = evaluate
        control.should_log = log


class CheckpointBarrierCallback(TrainerCallback):
    """Every rank writes its own RNG state into a checkpoint; the leader seals the folder
    only once all of them have finished writing."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        dist.barrier()


Ranks = SingleProcess | TorchRanks
