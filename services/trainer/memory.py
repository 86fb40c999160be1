"""Out-of-memory recovery: halve the per-device batch, double gradient accumulation.

The effective batch (per-device batch × accumulation steps) and so the optimisation stay
the same; only how much of it is on the device at once changes (the idea behind
``accelerate.find_executable_batch_size``, which halves the batch but lets the effective
batch shrink). When even a per-device batch of 1 does not fit, the run fails with the
non-retryable ``ResourceExhausted``: retrying on the same kind of device cannot help.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from temporalio.exceptions import ApplicationError

from shared.errors import RESOURCE_EXHAUSTED, failure
from shared.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's batch is split: ``per_device`` rows, ``accumulation`` times."""

    per_device: int
    accumulation: int = 1

    @property
    def effective(self) -> int:
        return self.per_device * self.accumulation

    def halved(self) -> BatchPlan | None:
        """At most half the rows per pass, the same effective batch; None at one row per pass.

        The new per-device size divides the effective batch exactly (16 → 8 → 4 → 2 → 1,
        but 6 → 3 → 1), so every optimizer step still sees ``effective`` rows.
        """
        for per_device in range(self.per_device // 2, 0, -1):
            if self.effective % per_device == 0:
                return BatchPlan(per_device, self.effective // per_device)
        return None


def is_out_of_memory(err: BaseException) -> bool:
    """A device (CUDA, MPS, XPU) or CPU allocator out-of-memory error."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, Exception) and should_reduce_batch_size(err)
    )


def free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resource_exhausted(what: str, plan: BatchPlan) -> ApplicationError:
    return failure(
        RESOURCE_EXHAUSTED,
        f"{what} does not fit in device memory even one row at a time (batch_size "
        f"{plan.effective}); use a smaller model, a shorter max_seq_length, or a device with "
        "more memory",
    )


def with_batch_fallback(
    what: str,
    plan: BatchPlan,
    run: Callable[[BatchPlan], T],
    on_reduced: Callable[[BatchPlan, BatchPlan], None] | None = None,
) -> tuple[T, BatchPlan]:
    """``run(plan)``, halving the plan after each out-of-memory error; (result, plan used)."""
    while True:
        try:
            return run(plan), plan
        except Exception as err:
            if not is_out_of_memory(err):
                raise
        # Out of memory. Handled outside the except block, so that the traceback (and the
        # tensors its frames hold) is released before the smaller batch is tried.
        free_device_memory()
        smaller = plan.halved()
        if smaller is None:
            raise resource_exhausted(what, plan)
        log.warning(
            "training.out_of_memory",
            phase=what,
            per_device_batch=plan.per_device,
            retry_per_device_batch=smaller.per_device,
            gradient_accumulation=smaller.accumulation,
        )
        if on_reduced:
            on_reduced(plan, smaller)
        plan = smaller
