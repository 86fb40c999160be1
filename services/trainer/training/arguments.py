"""From a ``BertFineTuneConfig`` to ``TrainingArguments`` keyword arguments (a pure mapping)."""

from __future__ import annotations

from typing import Any

from services.trainer.training.resources import BatchPlan
from shared.types import BertFineTuneConfig

# Evaluation batches hold no gradients: larger batches are cheaper per text.
MIN_EVAL_BATCH_SIZE = 32


def training_arguments(
    config: BertFineTuneConfig,
    *,
    output_dir: str,
    max_steps: int,
    use_cuda: bool,
    bf16: bool,
    checkpoint_steps: int | None,
    world_size: int = 1,
    batch: BatchPlan | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``transformers.TrainingArguments``.

    ``batch``: how each optimizer step's ``batch_size`` rows are split (a smaller per-device
    batch with gradient accumulation after an out-of-memory error); evaluation then uses
    the same per-device size, which is known to fit.

    ``checkpoint_steps`` None: no step-based saves (a callback decides by time instead).
    Checkpoint pruning is ours (``checkpoints.prune`` keeps the newest sealed ones), and so is
    logging (structured events), hence no ``save_total_limit``, progress bars or reporters.
    """
    batch = batch or BatchPlan(config.batch_size)
    eval_batch = batch.per_device if batch.reduced else max(batch.per_device, MIN_EVAL_BATCH_SIZE)
    return {
        "output_dir": output_dir,
        "num_train_epochs": config.num_epochs,
        # batch_size is the batch of one optimizer step: the ranks share it evenly, and each
        # rank's share may be split into accumulation steps (after an out-of-memory error).
        "per_device_train_batch_size": batch.per_device // world_size,
        "gradient_accumulation_steps": batch.accumulation,
        "per_device_eval_batch_size": eval_batch,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        # transformers 5 reads a warmup_steps below 1 as a fraction of the training steps.
        "warmup_steps": config.warmup_ratio,
        "seed": config.seed,
        # Batches of similar lengths; ``sampling.LengthGroupedTrainer`` replaces the Trainer's
        # sampler with one that pads less (every row once per epoch, batches in a new order).
        "train_sampling_strategy": "group_by_length" if config.group_by_length else "random",
        "data_seed": config.seed,
        "use_cpu": not use_cuda,
        "bf16": bf16,
        "save_strategy": "steps" if checkpoint_steps else "no",
        "save_steps": checkpoint_steps or max_steps,
        "save_total_limit": None,
        # Per-epoch evaluation is asked for by a callback, which skips the last epoch.
        "eval_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": max(1, min(50, max_steps // 20)),
        # The loss shows in progress from the first step, not only after logging_steps.
        "logging_first_step": True,
        # A NaN or infinite loss stays in the reported loss (transformers would average it
        # away), so a diverged run fails with TrainingDiverged instead of committing.
        "logging_nan_inf_filter": False,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": use_cuda,
        # The classification loss is a mean over the batch; with this on, transformers would
        # multiply it (and the gradients) by the number of ranks.
        "average_tokens_across_devices": False,
        # Every parameter of a sequence classifier takes part in each step: skip DDP's search.
        "ddp_find_unused_parameters": False,
    }
