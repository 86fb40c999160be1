"""End to end against a real Temporal server: train two configs, then serve predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from temporalio.client import Client

from shared import metrics
from shared.onnx_export import CHECK_TEXTS_FILE
from shared.runs import commit_digest
from shared.types import (
    FINE_TUNING_WORKFLOW,
    INFERENCE_WORKFLOW,
    BertExperimentInput,
    BertExperimentOutput,
    BertInferenceRequest,
    BertInferenceResult,
)
from tests.conftest import SentimentData, running_workers, tiny_config
from tests.helpers.exports import wait_for_export


async def test_experiment_trains_two_configs_and_serves_predictions(
    client: Client, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path, tmp_path: Path
) -> None:
    # The second config names the model with a slash, like a hub id, via a symlinked copy.
    slashed = tmp_path / "org"
    slashed.mkdir()
    shutil.copytree(tiny_model, slashed / "tiny-bert")
    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": "e2e",
            "runs": [
                tiny_config(tiny_model, sentiment_csv),
                tiny_config(slashed / "tiny-bert", sentiment_csv, seed=7),
            ],
        }
    )
    exported_before = metrics.EXPORTS.labels(outcome="exported")._value.get()
    async with running_workers(client, runs_root) as queues:
        output = await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id="e2e-experiment",
            task_queue=queues.training,
            result_type=BertExperimentOutput,
        )
        assert [run.run_id for run in output.runs] == [
            f"e2e-run-0-{str(tiny_model).replace('/', '_')}",
            f"e2e-run-1-{str(slashed / 'tiny-bert').replace('/', '_')}",
        ]
        for run in output.runs:
            run_dir = Path(run.model_dir)
            assert run_dir.parent == runs_root.resolve()
            assert (run_dir / "run.json").is_file()
            assert not (run_dir / "checkpoints").exists()
            # The commit keeps the texts that gate the int8 graph of the export that follows.
            assert (run_dir / CHECK_TEXTS_FILE).is_file()
            # The ONNX export follows the commit (its own workflow); the inferencer serves it.
            export = await wait_for_export(client, run.run_id)
            assert (export.outcome, export.exported_run_id) == ("exported", run.run_id)
            manifest = json.loads((run_dir / "onnx" / "export.json").read_text())
            assert manifest["source_commit"] == commit_digest(run_dir)
            assert manifest["served_graph"] == export.served_graph
            assert run.eval_accuracy is not None and run.eval_accuracy > 0.8
            assert run.label_names == ["negative", "positive"]
            assert run.num_train_samples == 160

        # The export activity is counted like the others (one per run, none in flight).
        assert metrics.EXPORTS.labels(outcome="exported")._value.get() == exported_before + 2
        assert metrics.EXPORTS_IN_FLIGHT._value.get() == 0

        from transformers import AutoModelForSequenceClassification

        reloaded = AutoModelForSequenceClassification.from_pretrained(output.runs[1].model_dir)
        assert reloaded.config.id2label == {0: "negative", 1: "positive"}

        texts = ["the movie was great fun", "it was awful and boring", "so wonderful"]
        result = await client.execute_workflow(
            INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id=output.runs[0].run_id, texts=texts),
            id="e2e-inference",
            task_queue=queues.inference,
            result_type=BertInferenceResult,
        )
    assert result.texts == texts
    assert result.label_names == ["positive", "negative", "positive"]
    assert result.labels == [1, 0, 1]
    assert all(0.5 <= c <= 1.0 for c in result.confidences)


@pytest.mark.parametrize("texts", [["good"] * 3 + ["bad"] * 2])
async def test_inference_keeps_input_order_across_batches(
    client: Client,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    texts: list[str],
) -> None:
    experiment = BertExperimentInput.model_validate(
        {"experiment_name": "order", "runs": [tiny_config(tiny_model, sentiment_csv)]}
    )
    varied = [f"{'the ' * i}{t}" for i, t in enumerate(texts)][::-1]
    async with running_workers(client, runs_root) as queues:
        output = await client.execute_workflow(
            FINE_TUNING_WORKFLOW,
            experiment,
            id="order-experiment",
            task_queue=queues.training,
            result_type=BertExperimentOutput,
        )
        result = await client.execute_workflow(
            INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id=output.runs[0].run_id, texts=varied, batch_size=2),
            id="order-inference",
            task_queue=queues.inference,
            result_type=BertInferenceResult,
        )
    expected = ["positive" if "good" in t else "negative" for t in varied]
    assert result.label_names == expected
    assert result.texts == varied


async def test_a_retrained_run_is_not_served_stale_from_the_model_cache(
    client: Client, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path, tmp_path: Path
) -> None:
    from tests.tiny import sentiment_rows, write_csv

    def renamed(rows: list[tuple[str, object]]) -> list[tuple[str, object]]:
        return [(text, "good" if label == "positive" else "bad") for text, label in rows]

    relabelled = SentimentData(
        train=write_csv(tmp_path / "t.csv", renamed(sentiment_rows(160, 1, string_labels=True))),
        validation=write_csv(
            tmp_path / "v.csv", renamed(sentiment_rows(40, 2, string_labels=True))
        ),
    )
    texts = ["so great and fun", "awful and sad"]
    async with running_workers(client, runs_root) as queues:

        async def train(data: SentimentData, overwrite: bool) -> str:
            output = await client.execute_workflow(
                FINE_TUNING_WORKFLOW,
                {
                    "experiment_name": "stale",
                    "overwrite": overwrite,
                    "runs": [tiny_config(tiny_model, data)],
                },
                id=f"stale-train-{overwrite}",
                task_queue=queues.training,
                result_type=BertExperimentOutput,
            )
            return output.runs[0].run_id

        async def predict(run_id: str, suffix: str) -> list[str]:
            result = await client.execute_workflow(
                INFERENCE_WORKFLOW,
                BertInferenceRequest(run_id=run_id, texts=texts),
                id=f"stale-infer-{suffix}",
                task_queue=queues.inference,
                result_type=BertInferenceResult,
            )
            return result.label_names

        run_id = await train(sentiment_csv, overwrite=False)
        assert await predict(run_id, "before") == ["positive", "negative"]
        assert await predict(run_id, "cached") == ["positive", "negative"]
        assert await train(relabelled, overwrite=True) == run_id
        assert await predict(run_id, "after") == ["good", "bad"]
