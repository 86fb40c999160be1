"""``group_by_length``: length-grouped batches, on by default, and part of the reuse identity.

The batches come from the Trainer's own sampler, built here the way ``TrainingSession`` builds
the Trainer (``training_arguments`` → ``TrainingArguments``), on texts of mixed length.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from services.trainer.training.arguments import training_arguments
from shared.run_record import RunRecord, identity_before_new_fields, run_identity
from shared.types import BertFineTuneConfig
from tests.tiny import build_tiny_bert

LEGACY_RUN = Path(__file__).parents[1] / "fixtures" / "legacy_v1" / "runs"
BATCH = 8


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("group-by-length") / "tiny")


def _trainer(model_dir: Path, group_by_length: bool, rows: int = 200) -> Trainer:
    import datasets

    rng = random.Random(0)
    words = ["good", "bad", "movie", "great", "awful", "plot", "fine"]
    texts = [" ".join(rng.choices(words, k=rng.choice([2, 3, 40, 60]))) for _ in range(rows)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(rows)]})
    encoded = encoded.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=128),
        batched=True,
        remove_columns=["text"],
    )
    config = BertFineTuneConfig(
        train_file="t.csv", batch_size=BATCH, num_epochs=1, group_by_length=group_by_length
    )
    args = training_arguments(
        config,
        output_dir=str(model_dir.parent / "out"),
        max_steps=rows // BATCH,
        use_cuda=False,
        bf16=False,
        checkpoint_steps=None,
    )
    return Trainer(
        model=AutoModelForSequenceClassification.from_pretrained(model_dir),
        args=TrainingArguments(**args),
        train_dataset=encoded,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )


def _padded_tokens(trainer: Trainer) -> tuple[int, int]:
    """(tokens fed including padding, real tokens) over one epoch of the train dataloader."""
    fed = real = 0
    for batch in trainer.get_train_dataloader():
        fed += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
    return fed, real


def test_on_by_default_and_mapped_onto_the_trainers_sampling_strategy() -> None:
    assert BertFineTuneConfig(train_file="t.csv").group_by_length is True
    for flag, strategy in ((True, "group_by_length"), (False, "random")):
        config = BertFineTuneConfig(train_file="t.csv", group_by_length=flag)
        args = training_arguments(
            config, output_dir="o", max_steps=10, use_cuda=False, bf16=False, checkpoint_steps=None
        )
        assert TrainingArguments(**args).train_sampling_strategy == strategy


def test_grouped_batches_visit_every_example_once_per_epoch(tiny_model: Path) -> None:
    trainer = _trainer(tiny_model, group_by_length=True)
    dataset = trainer._remove_unused_columns(trainer.train_dataset)
    for seed in (0, 1):
        trainer.args.seed = seed
        order = list(trainer._get_train_sampler(dataset))
        assert sorted(order) == list(range(len(dataset)))


def test_grouped_batches_carry_much_less_padding(tiny_model: Path) -> None:
    grouped_fed, real = _padded_tokens(_trainer(tiny_model, group_by_length=True))
    random_fed, same_real = _padded_tokens(_trainer(tiny_model, group_by_length=False))
    assert real == same_real  # the same rows, once each
    # Texts of 2-3 and 40-60 words: random batches nearly always hold a long one.
    assert grouped_fed < 0.75 * random_fed


def test_runs_trained_before_the_field_existed_count_as_ungrouped() -> None:
    record_path = next(LEGACY_RUN.glob("*/run.json"))
    raw = json.loads(record_path.read_text())
    assert "group_by_length" not in raw["config"]
    record = RunRecord.from_json(record_path.read_text())
    assert record.config.group_by_length is False
    grouped = record.config.model_copy(update={"group_by_length": True})
    ungrouped = record.config
    fingerprint = record.data_fingerprint
    # Reused only for a request that asks for no grouping.
    assert run_identity(ungrouped, fingerprint) == record.identity
    assert run_identity(grouped, fingerprint) != record.identity
    # Its checkpoints still resume under the new default (only the batch order differs).
    assert identity_before_new_fields(grouped, fingerprint) == record.identity
