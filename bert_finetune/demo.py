"""``bert-finetune demo``: the whole product on one machine, offline, in a few minutes.

Starts the local stack, fine-tunes the packaged MiniLM BERT on real tweets (positive vs
negative) through ``BertFineTuningWorkflow``, promotes the best run to the alias ``demo``
(``BertPromoteWorkflow``), predicts a few sentences by that alias through
``BertInferenceWorkflow``, prints the results and stops the stack.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from rich.console import Console

from bert_finetune import client_ops
from bert_finetune.demo_data import short_path, stage_minilm, write_tweet_splits
from bert_finetune.stack import LocalStack
from shared.settings import Settings
from shared.temporal import connect
from shared.types import BertExperimentInput, BertFineTuneConfig

DEMO_ALIAS = "demo"
# The staged model's folder name ends up in the run id: demo-tweets-run-0-.bert-finetune_minilm
DEMO_MODEL_FOLDER = "minilm"
DEMO_TRAIN_ROWS = 1600
DEMO_EVAL_ROWS = 400
DEMO_SENTENCES = [
    "I love how smooth and safe the ride in the self-driving car was!",
    "This is the worst idea ever, these cars will crash into everyone.",
    "Great news, the new autonomous shuttle works perfectly and saves time.",
    "I would never trust a robot to drive my kids, terrible and scary.",
]


def demo_experiment(
    model_dir: Path, train_file: Path, validation_file: Path
) -> BertExperimentInput:
    return BertExperimentInput(
        experiment_name="demo-tweets",
        overwrite=True,
        runs=[
            BertFineTuneConfig(
                model_name=short_path(model_dir),
                train_file=str(train_file),
                validation_file=str(validation_file),
                text_column="text",
                label_column="label",
                num_epochs=2,
                batch_size=32,
                learning_rate=1e-4,
                max_seq_length=64,
                seed=42,
            )
        ],
    )


async def _run(stack: LocalStack, console: Console, state_dir: Path) -> None:
    settings = Settings.from_env({**os.environ, "TEMPORAL_ADDRESS": stack.address})
    train_file, validation_file = write_tweet_splits(
        state_dir / "demo-data", DEMO_TRAIN_ROWS, DEMO_EVAL_ROWS
    )
    model_dir = stage_minilm(state_dir / DEMO_MODEL_FOLDER)
    experiment = demo_experiment(model_dir, train_file, validation_file)
    client = await connect(settings.temporal)
    handle = await client_ops.start_experiment(
        client, experiment, settings.training_task_queue, workflow_id=None
    )
    console.print(
        f"Training all-MiniLM-L6-v2 (staged in [bold]{experiment.runs[0].model_name}[/]) on "
        f"{DEMO_TRAIN_ROWS} tweets "
        f"(workflow {handle.id}, watch it at {stack.ui_url}/namespaces/default/workflows)"
    )
    output = await client_ops.watch_experiment(handle, console)
    console.print(client_ops.results_table(output))
    run = max(output.runs, key=lambda r: r.eval_accuracy or 0.0)
    promoted = await client_ops.promote(
        client, run.run_id, DEMO_ALIAS, settings.training_task_queue
    )
    console.print(
        f"Promoted the best run [bold]{promoted.run_id}[/] to the alias [bold]{DEMO_ALIAS}[/]"
        f" (`bert-finetune predict @{DEMO_ALIAS} TEXT...` serves it)"
    )
    prediction = await client_ops.predict(
        client, f"@{DEMO_ALIAS}", DEMO_SENTENCES, settings.inference_task_queue
    )
    console.print(client_ops.predictions_table(prediction, alias=DEMO_ALIAS))
    # The run's ONNX export follows its commit in its own workflow: wait for it before the
    # stack stops (it was served by PyTorch until then).
    export = await client_ops.export_run(client, run.run_id, settings.training_task_queue)
    console.print(
        f"ONNX export of the run: [bold]{export.served_graph}[/] ({export.outcome}, built after "
        "the commit by BertExportWorkflow); the inferencer serves it with ONNX Runtime"
    )
    beat = (
        run.eval_accuracy is not None
        and run.majority_baseline_accuracy is not None
        and run.eval_accuracy > run.majority_baseline_accuracy
    )
    console.print(
        f"Eval accuracy {run.eval_accuracy:.3f} vs majority-class baseline "
        f"{run.majority_baseline_accuracy:.3f}: "
        + ("[bold green]beats the baseline[/]" if beat else "[bold red]does not beat it[/]")
    )
    console.print(f"Model saved in [bold]{run.model_dir}[/]")
    console.print(
        f"Temporal Web UI: {stack.ui_url} (run `bert-finetune dev` to browse these workflows "
        "again; their history is kept in the state folder)"
    )
    console.print(
        "Loss curves and run comparisons: `bert-finetune dev --mlflow` also starts an MLflow "
        "tracking server (UI on http://127.0.0.1:5000) and logs every run to it "
        "(docs/observability.md)"
    )
    if not beat:
        raise client_ops.UserError("the demo model did not beat the majority baseline")


def run_demo(
    state_dir: Path,
    port: int,
    ui_port: int,
    console: Console,
    trainer_metrics_port: int = 9464,
    inferencer_metrics_port: int = 9465,
    inferencer_http_port: int = 8080,
) -> int:
    stack = LocalStack(
        state_dir=state_dir,
        port=port,
        ui_port=ui_port,
        runs_dir=Settings.from_env().runs_dir,
        quiet_workers=True,
        trainer_metrics_port=trainer_metrics_port,
        inferencer_metrics_port=inferencer_metrics_port,
        inferencer_http_port=inferencer_http_port,
        # The staged model and the tweet splits live in the state folder.
        extra_local_path_roots=(state_dir,),
    )
    console.print(f"Starting the local stack (Temporal dev server on {stack.address})...")
    stack.start()
    for note in stack.port_notes:
        console.print(note, highlight=False)
    try:
        asyncio.run(_run(stack, console, state_dir))
    finally:
        console.print("Stopping the local stack...")
        stack.stop()
    return 0
