"""The CLI as a user runs it: train with progress and a results table, runs, predict."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import yaml
from temporalio.client import Client

from tests.conftest import Queues, SentimentData, running_workers, tiny_config


async def cli(client: Client, queues: Queues, runs_root: Path, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "BERT_TRAINING_TASK_QUEUE": queues.training,
        "BERT_INFERENCE_TASK_QUEUE": queues.inference,
        "BERT_RUNS_DIR": str(runs_root),
        "COLUMNS": "200",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bert_finetune.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
    return process.returncode or 0, stdout.decode(), stderr.decode()


async def test_train_runs_and_predict_through_the_cli(
    client: Client, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path, tmp_path: Path
) -> None:
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        yaml.safe_dump(
            {"experiment_name": "cli-yaml", "runs": [tiny_config(tiny_model, sentiment_csv)]}
        ),
        encoding="utf-8",
    )
    async with running_workers(client, runs_root) as queues:
        code, out, err = await cli(client, queues, runs_root, "train", str(experiment), "--json")
        assert code == 0, err
        assert "Experiment cli-yaml" in out and "eval acc" in out
        result = json.loads(out[out.index("{") :])
        run_id = result["runs"][0]["run_id"]
        assert result["runs"][0]["eval_accuracy"] > 0.8

        # The same experiment again: reused, not retrained.
        code, out, err = await cli(
            client, queues, runs_root, "train", str(experiment), "--workflow-id", "cli-again"
        )
        assert code == 0, err
        assert "(reused)" in out

        code, out, err = await cli(client, queues, runs_root, "runs", "--json")
        assert code == 0, err
        runs = json.loads(out)
        assert [(r["run_id"], r["complete"]) for r in runs] == [(run_id, True)]

        texts = tmp_path / "texts.txt"
        texts.write_text("so great and fun\n\nawful and sad\n", encoding="utf-8")
        code, out, err = await cli(
            client,
            queues,
            runs_root,
            "predict",
            run_id,
            "a wonderful day",
            "--file",
            str(texts),
            "--json",
        )
        assert code == 0, err
        prediction = json.loads(out)
        assert prediction["texts"] == ["a wonderful day", "so great and fun", "awful and sad"]
        assert prediction["label_names"] == ["positive", "positive", "negative"]

        code, out, err = await cli(
            client,
            queues,
            runs_root,
            "train",
            str(experiment),
            "--no-wait",
            "--workflow-id",
            "cli-no-wait",
        )
        assert code == 0, err
        assert out.strip() == "cli-no-wait"
        await client.get_workflow_handle("cli-no-wait").result()
