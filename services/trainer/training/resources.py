"""What a run needs from the model and the device: sequence length and memory.

``max_seq_length`` must fit the model's position embeddings (else ``InvalidConfig``).

Out-of-memory recovery: halve the per-device batch, double gradient accumulation.

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
from typing import Any, TypeVar

from temporalio.exceptions import ApplicationError

from shared.errors import INVALID_CONFIG, MODEL_LOAD_ERROR, RESOURCE_EXHAUSTED, failure
from shared.logging import get_logger
from shared.tasks import TOKEN_CLASSIFICATION
from shared.types import BertFineTuneConfig

log = get_logger(__name__)

T = TypeVar("T")
# Tokenizers without a known limit report a huge sentinel as their ``model_max_length``.
_NO_TOKENIZER_LIMIT = 1_000_000


def check_sequence_length(max_seq_length: int, model_name: str, model: Any, tokenizer: Any) -> None:
    """Refuse a ``max_seq_length`` longer than the model can read, before training."""
    limits = [getattr(model.config, "max_position_embeddings", None)]
    limits.append(getattr(tokenizer, "model_max_length", None))
    usable = min(
        (n for n in limits if isinstance(n, int) and n < _NO_TOKENIZER_LIMIT), default=None
    )
    if usable is not None and max_seq_length > usable:
        raise failure(
            INVALID_CONFIG,
            f"max_seq_length {max_seq_length} is longer than model_name {model_name!r} can read "
            f"({usable} positions); set max_seq_length to {usable} or less",
        )


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's batch is split: ``per_device`` rows, ``accumulation`` times."""

    per_device: int
    accumulation: int = 1

    @property
    def effective(self) -> int:
        return self.per_device * self.accumulation

    @property
    def reduced(self) -> bool:
        return self.accumulation > 1

    def note(self) -> str:
        """What the result's ``notes`` say about a reduced plan."""
        return (
            f"batch_size {self.effective} did not fit in device memory: trained with per-device "
            f"batch {self.per_device} with {self.accumulation} gradient accumulation steps (the "
            f"same {self.effective} rows per optimizer step)"
        )

    def halved(self) -> BatchPlan | None:
        """At most half the rows per pass, the same effective batch; None at one row per pass.

        The new per-device size divides the effective batch exactly (16 → 8 → 4 → 2 → 1,
        but 6 → 3 → 1), so every optimizer step still sees ``effective`` rows.
        """
        for per_device in range(self.per_device // 2, 0, -1):
            if self.effective % per_device == 0:
                return BatchPlan(per_device, self.effective // per_device)
        return None


# How the allocators word running out of memory (CUDA/HIP/XPU, Apple MPS, CPU allocator).
_OUT_OF_MEMORY_MESSAGES = (
    " out of memory",
    "MPS backend out of memory",
    "DefaultCPUAllocator: can't allocate memory",
)


def check_task_tokenizer(config: BertFineTuneConfig, tokenizer: Any) -> None:
    """Token classification puts each word's tag on its first token, which needs the
    tokenizer's word ids: only fast (Rust) tokenizers have them (``ModelLoadError``)."""
    if config.task != TOKEN_CLASSIFICATION or getattr(tokenizer, "is_fast", False):
        return
    raise failure(
        MODEL_LOAD_ERROR,
        f"model_name {config.model_name!r} has a slow (Python) tokenizer; token_classification "
        "needs a fast one (a tokenizer.json next to the model: save it with "
        "AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained)",
    )


def is_out_of_memory(err: BaseException) -> bool:
    """A device or allocator out-of-memory error (``torch.OutOfMemoryError`` or its text)."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(
        message in str(err) for message in _OUT_OF_MEMORY_MESSAGES
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
