"""The CLI as a user runs it: train with progress and a results table, runs, predict, export."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import yaml
from temporalio.client import Client

from bert_finetune import client_ops
from services.trainer.worker import build_trainer_worker
from shared.export_types import EXPORT_WORKFLOW, BertExportInput, export_workflow_id
from shared.onnx_export import EXPORT_DIR, EXPORT_MANIFEST
from shared.runs import commit_digest
from tests.conftest import (
    TEST_LOCAL_PATH_ROOTS,
    Queues,
    SentimentData,
    running_workers,
    tiny_config,
)
from tests.helpers.runs import make_run

LABELS = ["negative", "positive"]


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


def error_lines(err: str) -> list[str]:
    """stderr without the JSON log events of workers (none run in the CLI process)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith('{"')]


async def test_export_a_saved_run_through_the_cli(
    client: Client, tiny_model: Path, runs_root: Path
) -> None:
    """A run committed without an export (made here, not trained) gets one bound to its
    commit; asking again reports it; a missing run or a bad id is one line and exit 1."""
    run_dir = make_run(runs_root, "made-run", tiny_model, LABELS)
    async with running_workers(client, runs_root, inferencer=False) as queues:
        code, out, err = await cli(client, queues, runs_root, "runs", "--json")
        assert code == 0, err
        assert [(r["run_id"], r["export"]) for r in json.loads(out)] == [("made-run", "none")]

        code, out, err = await cli(client, queues, runs_root, "export", "made-run")
        assert code == 0, err
        manifest = json.loads((run_dir / EXPORT_DIR / EXPORT_MANIFEST).read_text())
        assert manifest["source_commit"] == commit_digest(run_dir)
        graph = client_ops.graph_precision(manifest["served_graph"])
        assert out.count("\n") == 1, out  # one line
        assert out.startswith("Exported run made-run in ")
        assert f"serves the {graph} graph (onnx/{manifest['served_graph']})" in out

        code, out, err = await cli(client, queues, runs_root, "export", "made-run", "--json")
        assert code == 0, err
        again = json.loads(out)
        assert (again["outcome"], again["served_graph"]) == (
            "already_exported",
            manifest["served_graph"],
        )
        code, out, err = await cli(client, queues, runs_root, "export", "made-run")
        assert code == 0, err
        assert out.startswith("Run made-run already has an export of its current commit")

        code, out, err = await cli(client, queues, runs_root, "runs", "--json")
        assert code == 0, err
        assert [(r["run_id"], r["export"]) for r in json.loads(out)] == [("made-run", graph)]

        code, out, err = await cli(client, queues, runs_root, "export", "no-such-run")
        assert code == 1 and out == ""
        (line,) = error_lines(err)
        assert line.startswith("error: [RunNotFound] run 'no-such-run' does not exist"), line
        assert "Traceback" not in err

        code, out, err = await cli(client, queues, runs_root, "export", "../escape")
        assert code == 1 and out == ""
        (line,) = error_lines(err)
        assert line.startswith("error: [InvalidConfig] run_id:"), line


async def test_export_attaches_to_the_export_already_running(
    client: Client, tiny_model: Path, runs_root: Path
) -> None:
    """An export started by a run, sweep or promotion (here: by hand, before any trainer
    polls its queue) is joined, not refused: ``--no-wait`` prints its id, a waiting caller
    gets its outcome."""
    run_dir = make_run(runs_root, "joined-run", tiny_model, LABELS)
    queues = Queues(f"train-{uuid.uuid4()}", f"infer-{uuid.uuid4()}")
    workflow_id = export_workflow_id("joined-run")
    started = await client.start_workflow(
        EXPORT_WORKFLOW,
        BertExportInput(run_id="joined-run"),
        id=workflow_id,
        task_queue=queues.training,
    )
    code, out, err = await cli(client, queues, runs_root, "export", "joined-run", "--no-wait")
    assert code == 0, err
    assert out.strip() == workflow_id
    attached = await client_ops.start_export(client, "joined-run", queues.training)
    assert attached.id == workflow_id
    worker = build_trainer_worker(
        client,
        task_queue=queues.training,
        runs_root=runs_root,
        graceful_shutdown=timedelta(seconds=5),
        local_path_roots=TEST_LOCAL_PATH_ROOTS,
    )
    async with worker:
        output = await asyncio.wait_for(attached.result(), timeout=120)
    assert (output.outcome, output.exported_run_id) == ("exported", "joined-run")
    assert client_ops.export_summary(output).startswith("Exported run joined-run in ")
    # It was the execution started above that exported the run, and the only one.
    assert (await started.describe()).run_id == (await attached.describe()).run_id
    manifest = json.loads((run_dir / EXPORT_DIR / EXPORT_MANIFEST).read_text())
    assert manifest["source_commit"] == commit_digest(run_dir)
