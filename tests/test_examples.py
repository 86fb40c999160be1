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
