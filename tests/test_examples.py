"""The example specs in examples/ are valid input for the workflows they document."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from bert_finetune import client_ops
from bert_finetune.demo import DEMO_MODEL_FOLDER

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["experiment.yaml", "local-files.json"])
def test_experiment_examples_are_valid(name: str) -> None:
    client_ops.load_experiment(EXAMPLES / name)


TASK_EXAMPLES = {
    "token-classification.json": "token_classification",
    "multi-label.json": "multi_label_classification",
    "text-pairs.json": "single_label_classification",
    "regression.json": "regression",
}


@pytest.mark.parametrize("name", sorted(TASK_EXAMPLES))
def test_each_task_example_is_valid_and_names_what_task_data_writes(
    name: str, tmp_path: Path
) -> None:
    """The examples read the files `python -m bert_finetune.task_data` writes, with the
    columns those files have."""
    import csv
    import json

    from bert_finetune.task_data import DEFAULT_FOLDER, write_all

    experiment = client_ops.load_experiment(EXAMPLES / name)
    config = experiment.runs[0]
    assert config.task == TASK_EXAMPLES[name]
    assert config.model_name == f".bert-finetune/{DEMO_MODEL_FOLDER}"
    written = {str(p) for splits in write_all(tmp_path).values() for p in vars(splits).values()}
    for path in (config.train_file, config.validation_file):
        assert path is not None and path.startswith(f"{DEFAULT_FOLDER}/")
        local = tmp_path / Path(path).relative_to(DEFAULT_FOLDER)
        assert str(local) in written
        if local.suffix == ".jsonl":
            columns = set(json.loads(local.read_text(encoding="utf-8").splitlines()[0]))
        else:
            with local.open(encoding="utf-8", newline="") as handle:
                columns = set(next(csv.reader(handle)))
        named = {config.text_column, config.label_column, config.text_pair_column} - {None}
        assert named <= columns


def test_the_hub_tasks_example_is_valid() -> None:
    experiment = client_ops.load_experiment(EXAMPLES / "hub-tasks.yaml")
    assert [run.task for run in experiment.runs] == [
        "single_label_classification",
        "regression",
        "token_classification",
    ]
    assert experiment.runs[0].text_pair_column == "sentence2"


def _sweep_input_type() -> type:
    for module in ("shared.types", "shared.sweep_types"):
        try:
            found = getattr(importlib.import_module(module), "BertSweepInput", None)
        except ModuleNotFoundError:
            continue
        if found is not None:
            return found
    pytest.skip("BertSweepInput is not part of this tree yet")


def test_the_sweep_example_is_valid_and_uses_what_the_demo_stages() -> None:
    raw = yaml.safe_load((EXAMPLES / "sweep.yaml").read_text(encoding="utf-8"))
    sweep = _sweep_input_type().model_validate(raw)
    # Offline: the model and data `make demo` stages, relative to the workers' directory.
    assert sweep.base.model_name == f".bert-finetune/{DEMO_MODEL_FOLDER}"
    assert sweep.base.train_file.startswith(".bert-finetune/demo-data/")
    assert sweep.promote_alias
