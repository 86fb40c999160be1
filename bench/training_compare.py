"""Training: ``BertFineTuningWorkflow`` vs a plain HF ``Trainer`` script with dynamic padding,
and vs a run_glue-style script that pads every row to max length (same data, model,
hyperparameters and seed; samples/s, wall time for the same work, eval accuracy), with the
run's ONNX export after its commit.

The workflow runs with its defaults, so with ``group_by_length`` (length-sorted batches in
a new order every epoch, ``training/sampling.py``): batches of tweets of similar length carry
less padding than the script's randomly drawn batches. The repeats use one seed each
(``SEED``, ``SEED + 1``), the same on both sides of a pair, so the accuracy goal is an average
over two seeds."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_data import LABELS, SEED, TRAIN_QUEUE, BenchData, Row, step, verdict


@dataclass(frozen=True)
class TrainingFigures:
    samples_per_second: float  # the Trainer's own train_samples_per_second
    wall_seconds: float  # load, tokenize, train, evaluate, save
    eval_accuracy: float


def train_with_script(
    model_dir: Path, data: BenchData, out: Path, dynamic: bool, seed: int = SEED
) -> TrainingFigures:
    """What a user writes without this project: plain ``Trainer``, one epoch, then save.

    ``dynamic``: pad each batch to its longest row (``DataCollatorWithPadding``); otherwise
    pad every row to 128 tokens, as run_glue.py does by default.
    """
    import datasets
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    started = time.perf_counter()
    raw = datasets.load_dataset(
        "csv", data_files={"train": str(data.train_csv), "eval": str(data.eval_csv)}
    )
    raw = raw.map(lambda row: {"labels": LABELS.index(row["label"])}, remove_columns=["label"])
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    padding = False if dynamic else "max_length"
    encoded = raw.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=128, padding=padding),
        batched=True,
        remove_columns=["text"],
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir),
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=5e-5,
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )

    def accuracy(prediction: Any) -> dict[str, float]:
        predicted = np.argmax(prediction.predictions, axis=-1)
        return {"accuracy": float((predicted == prediction.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["eval"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer) if dynamic else default_data_collator,
        compute_metrics=accuracy,
    )
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(out / "model"))
    return TrainingFigures(
        float(output.metrics["train_samples_per_second"]),
        time.perf_counter() - started,
        float(metrics["eval_accuracy"]),
    )


async def train_with_workflow(
    client: Any, model_dir: Path, data: BenchData, overwrite: bool, seed: int = SEED
) -> tuple[TrainingFigures, Any]:
    """One experiment of one run, timed from start to result (the run committed; its ONNX
    export then follows in its own workflow, see ``wait_for_export``). ``overwrite``: train
    again rather than reuse an earlier repeat's identical run."""
    from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput

    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": f"bench-{uuid.uuid4().hex[:8]}",
            "overwrite": overwrite,
            "runs": [
                {
                    "model_name": str(model_dir),
                    "train_file": str(data.train_csv),
                    "validation_file": str(data.eval_csv),
                    "text_column": "text",
                    "label_column": "label",
                    "num_epochs": 1,
                    "batch_size": 16,
                    "learning_rate": 5e-5,
                    "max_seq_length": 128,
                    "seed": seed,
                    "use_gpu": False,
                }
            ],
        }
    )
    started = time.perf_counter()
    output = await client.execute_workflow(
        FINE_TUNING_WORKFLOW,
        experiment,
        id=experiment.experiment_name,
        task_queue=TRAIN_QUEUE,
        result_type=BertExperimentOutput,
    )
    wall = time.perf_counter() - started
    run = output.runs[0]
    figures = TrainingFigures(run.train_samples_per_second, wall, float(run.eval_accuracy or 0))
    return figures, run


async def wait_for_export(client: Any, run_id: str) -> Any:
    """The run's ``BertExportWorkflow`` result (started by the run as it committed)."""
    from shared.export_types import BertExportOutput, export_workflow_id

    handle = client.get_workflow_handle(export_workflow_id(run_id), result_type=BertExportOutput)
    return await handle.result()


def mean_figures(figures: list[TrainingFigures]) -> TrainingFigures:
    return TrainingFigures(
        statistics.fmean(f.samples_per_second for f in figures),
        statistics.fmean(f.wall_seconds for f in figures),
        statistics.fmean(f.eval_accuracy for f in figures),
    )


@dataclass
class TrainingComparison:
    script: TrainingFigures  # the mean of the repeats
    padded: TrainingFigures
    workflow: TrainingFigures  # the mean of the repeats
    repeats: list[tuple[TrainingFigures, TrainingFigures]]  # (script, workflow) in order
    run: Any  # the last workflow run's ``BertRunOutput``: what the inference sides serve
    export_seconds: float  # the export workflow's own build time
    export_wall_seconds: float  # from the run's commit (workflow result) to the export landing


async def compare_training(
    client: Any, model_dir: Path, data: BenchData, work: Path, repeats: int
) -> TrainingComparison:
    """The script and the workflow ``repeats`` times each, then the run_glue-style script."""
    # Interleaved A B B A: a drift in the machine's speed (other tenants, thermals)
    # lands on both sides alike; the table shows the means. Repeat i uses seed SEED + i on
    # both sides.
    scripts: list[TrainingFigures] = []
    workflows: list[TrainingFigures] = []
    export_walls: list[float] = []
    for index, side in enumerate(["script", "workflow", "workflow", "script"][: 2 * repeats]):
        seed = SEED + index // 2
        if side == "script":
            step(f"training: plain Trainer script, dynamic padding (seed {seed})")
            scripts.append(
                await asyncio.to_thread(
                    train_with_script,
                    model_dir,
                    data,
                    work / f"script-{len(scripts)}",
                    True,
                    seed,
                )
            )
            continue
        step(f"training: BertFineTuningWorkflow, group_by_length (seed {seed})")
        figures, run = await train_with_workflow(
            client, model_dir, data, overwrite=bool(workflows), seed=seed
        )
        workflows.append(figures)
        # Untimed: the export runs after the commit; nothing else may run meanwhile.
        committed = time.perf_counter()
        export = await wait_for_export(client, run.run_id)
        export_walls.append(time.perf_counter() - committed)
    step("training: run_glue-style script, every row padded to 128 tokens")
    padded = await asyncio.to_thread(train_with_script, model_dir, data, work / "padded", False)
    return TrainingComparison(
        script=mean_figures(scripts),
        padded=padded,
        workflow=mean_figures(workflows),
        repeats=list(zip(scripts, workflows, strict=True)),
        run=run,
        export_seconds=export.export_seconds,
        export_wall_seconds=export_walls[-1],
    )


# Goals for the workflow (``group_by_length`` on) against the plain script (issue 24).
SPEED_GOAL = 1.15
ACCURACY_SLACK = 0.01


def training_rows(t: TrainingComparison) -> list[Row]:
    speed = t.workflow.samples_per_second
    accuracy_gap = t.workflow.eval_accuracy - t.script.eval_accuracy
    seeds = f"mean of {len(t.repeats)} seed{'s' if len(t.repeats) > 1 else ''}"
    return [
        (
            "training samples/s: workflow (`group_by_length`, the default) vs plain Trainer "
            f"script (dynamic padding), {seeds}",
            f"{t.workflow.samples_per_second:.1f}",
            f"{t.script.samples_per_second:.1f}",
            f"{t.workflow.samples_per_second / t.script.samples_per_second:.2f}x",
            f"≥ {SPEED_GOAL}x: {verdict(speed >= SPEED_GOAL * t.script.samples_per_second)}",
            f"eval accuracy {t.workflow.eval_accuracy:.3f} vs {t.script.eval_accuracy:.3f} "
            f"({seeds}; within {ACCURACY_SLACK}: "
            f"{verdict(abs(accuracy_gap) <= ACCURACY_SLACK)})",
        ),
        (
            "training wall s (load, tokenize, train, evaluate, save): workflow vs script",
            f"{t.workflow.wall_seconds:.1f}",
            f"{t.script.wall_seconds:.1f}",
            f"{t.workflow.wall_seconds / t.script.wall_seconds:.2f}x",
            f"≤ 1.10x: {verdict(t.workflow.wall_seconds <= 1.10 * t.script.wall_seconds)}",
            "workflow: start to result, through Temporal, the run committed (`run.json`)",
        ),
        (
            "ONNX export after the commit (`BertExportWorkflow`), s",
            f"{t.export_wall_seconds:.1f}",
            "",
            "",
            "",
            f"builds in {t.export_seconds:.1f} s; the run is served by PyTorch until it lands",
        ),
        (
            "training samples/s: workflow vs run_glue-style script (pad to 128)",
            f"{t.workflow.samples_per_second:.1f}",
            f"{t.padded.samples_per_second:.1f}",
            f"{t.workflow.samples_per_second / t.padded.samples_per_second:.2f}x",
            "",
            f"eval accuracy {t.workflow.eval_accuracy:.3f} vs {t.padded.eval_accuracy:.3f}",
        ),
    ]


def training_notes(t: TrainingComparison) -> str:
    """The report's paragraph on how the training sides ran."""
    return (
        f"Training ran {len(t.repeats)} times per side after one untimed warm-up run of the "
        f"script, interleaved (script, workflow, workflow, script), repeat i with seed "
        f"{SEED} + i on both sides, each workflow run trained anew (`overwrite`) with its "
        f"default `group_by_length` (length-sorted batches, shuffled every epoch); the script "
        f"draws its batches at random and pads each to its longest row. The table shows the means. "
        f"Each run: "
        + "; ".join(
            f"seed {SEED + i}: script {s.samples_per_second:.1f} samples/s in "
            f"{s.wall_seconds:.1f} s (accuracy {s.eval_accuracy:.3f}), workflow "
            f"{w.samples_per_second:.1f} samples/s in {w.wall_seconds:.1f} s (accuracy "
            f"{w.eval_accuracy:.3f})"
            for i, (s, w) in enumerate(t.repeats)
        )
        + ". The run's ONNX export follows its commit in its own workflow "
        "(`BertExportWorkflow`), so the experiment's result does not wait for it; the bench "
        "waits for it, untimed, before the next step."
    )
