"""training_arguments: the config's hyperparameters reach TrainingArguments as documented."""

from __future__ import annotations

import math

from transformers import TrainingArguments

from services.trainer.training.arguments import training_arguments
from shared.types import BertFineTuneConfig


def _args(config: BertFineTuneConfig, checkpoint_steps: int | None = None) -> dict:
    return training_arguments(
        config,
        output_dir="out",
        max_steps=200,
        use_cuda=False,
        bf16=False,
        checkpoint_steps=checkpoint_steps,
    )


def test_hyperparameters_map_onto_training_arguments() -> None:
    config = BertFineTuneConfig(
        train_file="t.csv", weight_decay=0.01, warmup_ratio=0.1, learning_rate=3e-5, seed=7
    )
    args = TrainingArguments(**_args(config))
    assert args.weight_decay == 0.01
    assert args.learning_rate == 3e-5
    assert args.seed == args.data_seed == 7
    assert args.get_warmup_steps(200) == math.ceil(200 * 0.1) == 20
    assert args.per_device_eval_batch_size >= args.per_device_train_batch_size


def test_checkpoints_are_step_based_only_when_checkpoint_steps_is_given() -> None:
    config = BertFineTuneConfig(train_file="t.csv")
    assert _args(config, checkpoint_steps=25)["save_strategy"] == "steps"
    assert _args(config, checkpoint_steps=25)["save_steps"] == 25
    assert _args(config)["save_strategy"] == "no"  # a callback saves by time instead
