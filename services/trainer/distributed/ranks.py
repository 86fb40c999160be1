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
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # transformers stays out of the controller, which trains nothing
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
        from services.trainer.training.callbacks import StepAgreementCallback

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
        from services.trainer.training.callbacks import CheckpointBarrierCallback

        barrier = CheckpointBarrierCallback()
        return [barrier, seal] if self.is_leader else [barrier]

    def agreement(self) -> list[TrainerCallback]:
        """Goes after every other callback, so it sees every local decision of the step."""
        return [self._agreement]


Ranks = SingleProcess | TorchRanks
