"""``group_by_length``: length-grouped batches, on by default, and part of the reuse identity.

The batches come from ``LengthGroupedTrainer``'s samplers, built here the way
``TrainingSession`` builds the Trainer (``training_arguments`` → ``TrainingArguments``), on
texts of mixed length; ``grouped_indices`` and ``sorted_indices`` are tested on their own.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from temporalio.testing import ActivityEnvironment
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.training import sampling
from services.trainer.training.arguments import training_arguments
from services.trainer.training.sampling import (
    BucketSampler,
    LengthGroupedTrainer,
    SortedSampler,
    grouped_indices,
    sorted_indices,
)
from shared.run_record import RunRecord, identity_before_new_fields, run_identity
from shared.types import BertFineTuneConfig, BertFineTuneRequest
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway
from tests.tiny import build_tiny_bert

LEGACY_RUN = Path(__file__).parents[1] / "fixtures" / "legacy_v1" / "runs"
BATCH = 8


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("group-by-length") / "tiny")


def _trainer(
    model_dir: Path,
    group_by_length: bool,
    rows: int = 200,
    trainer_class: type[Trainer] = LengthGroupedTrainer,
) -> Trainer:
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
    return trainer_class(
        model=AutoModelForSequenceClassification.from_pretrained(model_dir),
        args=TrainingArguments(**args),
        train_dataset=encoded,
        eval_dataset=encoded,
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
    sampler = trainer._get_train_sampler(dataset)
    assert isinstance(sampler, BucketSampler)
    epochs = [list(sampler) for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(len(dataset)))
    assert epochs[0] != epochs[1] != epochs[2]  # a new order every epoch


def test_without_grouping_the_trainers_own_samplers_are_kept(tiny_model: Path) -> None:
    from torch.utils.data import RandomSampler, SequentialSampler

    trainer = _trainer(tiny_model, group_by_length=False)
    dataset = trainer._remove_unused_columns(trainer.train_dataset)
    assert isinstance(trainer._get_train_sampler(dataset), RandomSampler)
    assert isinstance(trainer._get_eval_sampler(dataset), SequentialSampler)


def test_grouped_batches_carry_much_less_padding(tiny_model: Path) -> None:
    grouped_fed, real = _padded_tokens(_trainer(tiny_model, group_by_length=True))
    random_fed, same_real = _padded_tokens(_trainer(tiny_model, group_by_length=False))
    assert real == same_real  # the same rows, once each
    # Texts of 2-3 and 40-60 words: random batches nearly always hold a long one.
    assert grouped_fed < 0.75 * random_fed


def test_less_padding_than_the_trainers_own_length_grouped_sampler(tiny_model: Path) -> None:
    # Sorting all rows and cutting them into batches gives the least padding any partition
    # into equal batches can; the Trainer's sampler sorts only within mega-batches.
    torch.manual_seed(0)  # both samplers draw from the global generator
    ours, real = _padded_tokens(_trainer(tiny_model, group_by_length=True, rows=400))
    theirs, same_real = _padded_tokens(
        _trainer(tiny_model, group_by_length=True, rows=400, trainer_class=Trainer)
    )
    assert real == same_real
    assert ours < theirs


def test_evaluation_batches_are_sorted_by_length_and_change_no_metric(tiny_model: Path) -> None:
    grouped = _trainer(tiny_model, group_by_length=True)
    dataset = grouped._remove_unused_columns(grouped.eval_dataset)
    sampler = grouped._get_eval_sampler(dataset)
    assert isinstance(sampler, SortedSampler)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = list(sampler)
    assert sorted(order) == list(range(len(dataset)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)

    def accuracy(prediction: object) -> dict[str, float]:
        logits, labels = prediction.predictions, prediction.label_ids  # type: ignore[attr-defined]
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    ungrouped = _trainer(tiny_model, group_by_length=False)
    for trainer in (grouped, ungrouped):
        trainer.compute_metrics = accuracy
    sorted_metrics, in_order = grouped.evaluate(), ungrouped.evaluate()
    assert sorted_metrics["eval_accuracy"] == in_order["eval_accuracy"]
    assert sorted_metrics["eval_loss"] == pytest.approx(in_order["eval_loss"], rel=1e-4)


@pytest.mark.parametrize("grouped", [True, False])
def test_a_training_run_orders_its_batches_with_these_samplers_only_when_grouping(
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    grouped: bool,
) -> None:
    # The real activity, end to end: which orders did the run's data loaders draw?
    drawn = {"train": 0, "eval": 0}
    train_order, eval_order = sampling.grouped_indices, sampling.sorted_indices

    def counted_train(*args: object, **kwargs: object) -> list[int]:
        drawn["train"] += 1
        return train_order(*args, **kwargs)  # type: ignore[arg-type]

    def counted_eval(*args: object, **kwargs: object) -> list[int]:
        drawn["eval"] += 1
        return eval_order(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sampling, "grouped_indices", counted_train)
    monkeypatch.setattr(sampling, "sorted_indices", counted_eval)
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=2, group_by_length=grouped)
    result = ActivityEnvironment().run(
        TrainingActivities(
            runs_root, OfflineGateway(), local_path_roots=LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
        ).fine_tune_bert,
        BertFineTuneRequest(run_id="grouping-run-0-tiny", config=BertFineTuneConfig(**config)),
    )
    assert result.epochs_completed == 2 and "eval_accuracy" in result.eval_metrics
    if grouped:
        assert drawn["train"] == 2, "a new order for each epoch"
        assert drawn["eval"] >= 1
    else:
        assert drawn == {"train": 0, "eval": 0}


def test_batches_after_the_first_come_in_random_order() -> None:
    lengths = list(range(160))  # every length distinct: the batches' order shows
    order = grouped_indices(lengths, 8, torch.Generator().manual_seed(0))
    longest = [max(lengths[i] for i in order[start : start + 8]) for start in range(0, 160, 8)]
    assert longest[0] == 159
    assert longest[1:] != sorted(longest[1:], reverse=True)
    assert sorted(longest) == [8 * k + 7 for k in range(20)]  # still 20 sorted cuts


@pytest.mark.parametrize(("rows", "batch"), [(0, 4), (1, 4), (7, 4), (8, 4), (33, 8), (100, 1)])
def test_grouped_indices_are_batches_of_near_equal_length(rows: int, batch: int) -> None:
    rng = random.Random(rows)
    lengths = [rng.choice([3, 3, 5, 9, 40, 41, 60]) for _ in range(rows)]
    order = grouped_indices(lengths, batch, torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(rows))
    batches = [order[start : start + batch] for start in range(0, rows, batch)]
    # Cut from one sort: no two batches' length ranges overlap except at their edges.
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    for (_, upper), (lower, _) in zip(spans, spans[1:], strict=False):
        assert upper <= lower
    if batches:
        assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest first
        assert all(len(b) == batch for b in batches[:-1])  # only the last may be partial


def test_grouped_indices_follow_the_generator() -> None:
    lengths = [i % 13 for i in range(200)]

    def order(seed: int) -> list[int]:
        return grouped_indices(lengths, 8, torch.Generator().manual_seed(seed))

    assert order(3) == order(3)  # a resumed run draws the same order again
    assert order(3) != order(4)
    with pytest.raises(ValueError, match="batch_size"):
        grouped_indices(lengths, 0)


def test_sorted_indices_are_longest_first_and_stable() -> None:
    assert sorted_indices([2, 5, 2, 9, 5]) == [3, 1, 4, 0, 2]
    assert sorted_indices([]) == []


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
