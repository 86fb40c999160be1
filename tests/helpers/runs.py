"""Complete run folders built without training, for inference tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from shared.run_record import RunRecord
from shared.runs import write_record
from shared.types import BertFineTuneConfig, BertFineTuneResult


def make_run(runs_root: Path, run_id: str, model_dir: Path, label_names: list[str]) -> Path:
    """A complete run folder holding ``model_dir``'s model and tokenizer, labelled
    ``label_names``, with a ``run.json`` record like the trainer's commit writes."""
    from transformers import AutoConfig

    run_dir = runs_root / run_id
    shutil.copytree(model_dir, run_dir)
    model_config = AutoConfig.from_pretrained(run_dir)
    model_config.id2label = dict(enumerate(label_names))
    model_config.label2id = {name: i for i, name in enumerate(label_names)}
    model_config.save_pretrained(run_dir)
    config = BertFineTuneConfig(model_name=str(model_dir), train_file="made-up.csv")
    result = BertFineTuneResult(
        run_id=run_id,
        config=config,
        train_loss=0.0,
        eval_accuracy=None,
        training_time_seconds=0.0,
        num_parameters=0,
        model_dir=str(run_dir),
        num_train_samples=0,
        train_samples_per_second=0.0,
        label_names=label_names,
    )
    write_record(
        run_dir,
        RunRecord(
            run_id=run_id,
            config=config,
            data_fingerprint="made-up",
            label_names=label_names,
            result=result,
        ),
    )
    return run_dir
