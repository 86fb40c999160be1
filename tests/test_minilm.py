"""The real packaged MiniLM BERT, fine-tuned briefly on real tweets, beats the baseline."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client

from bert_finetune.demo_data import minilm_model_dir, write_tweet_splits
from shared.types import (
    FINE_TUNING_WORKFLOW,
    INFERENCE_WORKFLOW,
    BertExperimentOutput,
    BertInferenceResult,
)
from tests.conftest import running_workers

LOVING = [
    "I love this, it is wonderful",
    "what a great day, so happy right now",
    "thank you so much, this is amazing",
    "best game ever, loved every minute",
]
HATEFUL = [
    "this is terrible, I hate it",
    "worst service ever, so angry right now",
    "awful day, everything went wrong",
    "I hate waiting, this is ridiculous",
]


@pytest.mark.slow
async def test_minilm_beats_majority_baseline_on_tweets(
    client: Client, runs_root: Path, tmp_path: Path
) -> None:
    train, validation = write_tweet_splits(tmp_path / "tweets", train_rows=480, eval_rows=200)
    experiment = {
        "experiment_name": "minilm",
        "runs": [
            {
                "model_name": str(minilm_model_dir()),
                "train_file": str(train),
                "validation_file": str(validation),
                "text_column": "text",
                "label_column": "label",
                "num_epochs": 2,
                "batch_size": 16,
                "learning_rate": 1e-4,
                "max_seq_length": 64,
                "use_gpu": False,
            }
        ],
    }
    async with running_workers(client, runs_root) as queues:
        output = await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id="minilm-experiment",
            task_queue=queues.training,
            result_type=BertExperimentOutput,
        )
        run = output.runs[0]
        assert run.label_names == ["negative", "positive"]
        assert run.num_parameters > 20_000_000
        assert run.majority_baseline_accuracy is not None and run.eval_accuracy is not None
        assert run.eval_accuracy > run.majority_baseline_accuracy + 0.03, (
            f"accuracy {run.eval_accuracy:.3f} vs baseline {run.majority_baseline_accuracy:.3f}"
        )
        result = await client.execute_workflow(
            INFERENCE_WORKFLOW,
            {
                "run_id": run.run_id,
                "texts": [*LOVING, *HATEFUL],
            },
            id="minilm-inference",
            task_queue=queues.inference,
            result_type=BertInferenceResult,
        )
    # A briefly trained model on imbalanced tweets can put every text on the majority side of
    # 0.5; what it must have learned is the direction: loving texts score more positive than
    # hateful ones. (One pair alone is too noisy a probe: over seeds and batch orders its
    # margin ranges from a few hundredths to 0.4; an untrained head gives about 0.)
    positive = [
        confidence if name == "positive" else 1.0 - confidence
        for name, confidence in zip(result.label_names, result.confidences, strict=True)
    ]
    loving, hateful = positive[: len(LOVING)], positive[len(LOVING) :]
    assert sum(loving) / len(loving) > sum(hateful) / len(hateful) + 0.1, (
        result.label_names,
        result.confidences,
    )
    assert sum(name == "positive" for name in result.label_names[: len(LOVING)]) >= sum(
        name == "positive" for name in result.label_names[len(LOVING) :]
    )
