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
    write_record(run_dir, sample_record(run_id, label_names, model_name=str(model_dir)))
    return run_dir


def sample_record(
    run_id: str, label_names: list[str], model_name: str = "tiny-bert", **config: object
) -> RunRecord:
    """A valid record of a run that was never trained (made-up data, zero metrics)."""
    fine_tune_config = BertFineTuneConfig(model_name=model_name, train_file="made-up.csv", **config)
    result = BertFineTuneResult(
        run_id=run_id,
        config=fine_tune_config,
        train_loss=0.0,
        eval_accuracy=None,
        training_time_seconds=0.0,
        num_parameters=0,
        model_dir=run_id,
        num_train_samples=0,
        train_samples_per_second=0.0,
        label_names=label_names,
    )
    return RunRecord(
        run_id=run_id,
        config=fine_tune_config,
        data_fingerprint="made-up",
        label_names=label_names,
        result=result,
    )
