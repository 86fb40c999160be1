"""The `temporal` CLI path: both workflows started with plain JSON, JSON results parsed."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.client import Client

from tests.conftest import SentimentData, run_temporal_cli, running_workers, tiny_config


async def temporal(client: Client, *args: str) -> dict:
    return await run_temporal_cli(client.service_client.config.target_host, *args)


async def test_temporal_cli_runs_both_workflows_with_plain_json(
    client: Client, tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    experiment = {"experiment_name": "cli-json", "runs": [tiny_config(tiny_model, sentiment_csv)]}
    async with running_workers(client, runs_root) as queues:
        started = await temporal(
            client,
            "workflow",
            "start",
            "--type",
            "BertFineTuningWorkflow",
            "--task-queue",
            queues.training,
            "--workflow-id",
            "cli-json-experiment",
            "--input",
            json.dumps(experiment),
        )
        assert started["workflowId"] == "cli-json-experiment"
        output = await client.get_workflow_handle("cli-json-experiment").result()
        run_id = output["runs"][0]["run_id"]
        assert run_id == f"cli-json-run-0-{str(tiny_model).replace('/', '_')}"

        query = await temporal(
            client,
            "workflow",
            "query",
            "--workflow-id",
            "cli-json-experiment",
            "--name",
            "progress",
        )
        assert query["queryResult"][0]["runs"][0]["state"] == "succeeded"

        executed = await temporal(
            client,
            "workflow",
            "execute",
            "--type",
            "BertInferenceWorkflow",
            "--task-queue",
            queues.inference,
            "--workflow-id",
            "cli-json-inference",
            "--input",
            json.dumps({"run_id": run_id, "texts": ["so great and fun", "awful and sad"]}),
        )
    assert executed["status"].endswith("COMPLETED")
    result = executed["result"]
    assert result["label_names"] == ["positive", "negative"]
    assert len(result["confidences"]) == 2
