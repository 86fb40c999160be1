"""``make bench``: every comparison of the performance goals, side by side, in one process tree.

One process starts a local Temporal dev server, a training worker, an inference worker and a
worker for Temporal's floor workflows, then measures on the packaged MiniLM (a 6-layer
BERT) and real tweets, one module per comparison:

1. training (``bench.training_compare``): ``BertFineTuningWorkflow`` vs a plain HF ``Trainer``
   script with dynamic padding and vs a run_glue-style script that pads every row to max
   length (same data, model, hyperparameters and seed; samples/s, wall time for the same
   work, eval accuracy);
2. inference (``bench.inference_compare``): ``BertInferenceWorkflow`` (the run's ONNX export,
   and the PyTorch path) vs ``transformers.pipeline`` on the same saved model (texts/s, label
   agreement, accuracy);
3. latency (``bench.floor_compare``): a warm 8-text request through ``BertInferenceWorkflow``
   vs Temporal's own floors for each call shape (a workflow with one activity, with one local
   activity, an Update);
4. sweep overhead (``bench.sweep_overhead``): orchestration seconds per trial of a sweep of
   the tests' tiny BERT, with the tokenized-dataset cache on and off;
5. sweeps (``bench.sweep_compare``): ``BertSweepWorkflow`` (TPE, successive halving) vs
   ``Trainer.hyperparameter_search(backend="optuna")`` with a pruner, same space, trials,
   epochs and seeds (wall time, best accuracy, trials pruned, seconds per trained epoch);
6. token classification (``bench.token_inference``): a MiniLM tagger trained by the workflow
   on WNUT-16 tweets, served from its ONNX export by ``BertInferenceWorkflow`` vs the
   transformers ``token-classification`` pipeline on the same saved model (texts/s, word
   tags agreeing, entity F1).

It prints one table and writes it, with the command and the machine, to docs/benchmarks.md.

    python -m bench.compare [--train-rows 1024] [--infer-rows 1024] [--sweep-trials 6]
                            [--sweep-epochs 3] [--sweep-rows 512] [--sweep-seeds 42 43]
                            [--token-train-rows 1024] [--token-infer-rows 512] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.bench_data import (
    FLOOR_QUEUE,
    INFER_QUEUE,
    SEED,
    TRAIN_QUEUE,
    prepare_data,
    step,
    temporal_cli,
)
from bench.floor_compare import Latencies, compare_latency, floor_notes, latency_rows
from bench.inference_compare import (
    InferenceComparison,
    compare_inference,
    inference_rows,
)
from bench.sweep_compare import (
    SweepComparison,
    SweepSetup,
    compare_sweeps,
    prepare_sweep_data,
    sweep_notes,
    sweep_rows,
)
from bench.sweep_overhead import (
    OverheadComparison,
    OverheadSetup,
    measure_overhead,
    overhead_notes,
    overhead_rows,
)
from bench.token_inference import (
    TokenComparison,
    TokenSetup,
    compare_token_inference,
    prepare_token_data,
    token_notes,
    token_rows,
)
from bench.training_compare import (
    TrainingComparison,
    compare_training,
    train_with_script,
    training_notes,
    training_rows,
)

# Before transformers is imported (the comparisons import it inside their functions).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SECTION = "## Side by side (`make bench`)"


@dataclass
class Results:
    training: TrainingComparison
    inference: InferenceComparison
    latencies: Latencies
    overhead: OverheadComparison
    sweeps: SweepComparison
    tokens: TokenComparison


async def run_all(args: argparse.Namespace, work: Path) -> Results:
    """The dev server and the three workers, then each comparison in turn."""
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from bench.floors import FLOOR_ACTIVITIES, FLOOR_WORKFLOWS
    from bert_finetune.demo_data import minilm_model_dir
    from services.inferencer.worker import build_inferencer_worker
    from services.trainer.worker import build_trainer_worker
    from shared.converter import data_converter
    from shared.logging import configure_logging

    configure_logging("WARNING", "console")
    model_dir = minilm_model_dir()
    data = prepare_data(work, args.train_rows, args.eval_rows, args.infer_rows)
    sweep_train, sweep_eval = prepare_sweep_data(
        work / "sweep", args.sweep_rows, args.sweep_eval_rows
    )
    sweep_setup = SweepSetup(
        model_dir=model_dir,
        train_csv=sweep_train,
        eval_csv=sweep_eval,
        rows=args.sweep_rows,
        eval_rows=args.sweep_eval_rows,
        trials=args.sweep_trials,
        epochs=args.sweep_epochs,
        pruner=args.sweep_pruner,
    )
    token_train, token_eval, token_words, token_gold = prepare_token_data(
        work / "tokens", args.token_train_rows, args.token_eval_rows, args.token_infer_rows
    )
    token_setup = TokenSetup(
        model_dir, token_train, token_eval, token_words, token_gold, args.token_train_rows
    )
    runs_root = work / "runs"
    runs_root.mkdir()

    # Untimed: one-time process costs (imports, first kernels, dataset caching code paths)
    # would otherwise all land on whichever side runs first. A whole training run, because
    # on these machines the first half minute of heavy compute runs faster than the rest
    # (measured: whichever side trained first was 10-20% faster than both sides later).
    step("warm-up: the plain script, one whole untimed run")
    await asyncio.to_thread(train_with_script, model_dir, data, work / "warm-up", True)
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter,
        dev_server_existing_path=temporal_cli(),
        dev_server_log_level="error",
    )
    try:
        client = env.client
        floor_worker = Worker(
            client,
            task_queue=FLOOR_QUEUE,
            workflows=FLOOR_WORKFLOWS,
            activities=FLOOR_ACTIVITIES,
            activity_executor=ThreadPoolExecutor(max_workers=4),
        )
        async with (
            build_trainer_worker(
                client,
                task_queue=TRAIN_QUEUE,
                runs_root=runs_root,
                # The bench's data and the packaged model are where the trainer may read.
                local_path_roots=[work, model_dir],
            ),
            build_inferencer_worker(client, task_queue=INFER_QUEUE, runs_root=runs_root),
            floor_worker,
        ):
            training = await compare_training(client, model_dir, data, work, args.repeats)
            inference = await compare_inference(
                client, runs_root, Path(training.run.model_dir), data.texts, data.gold
            )
            latencies = await compare_latency(
                client,
                runs_root,
                inference.onnx_run,
                inference.torch_run,
                data.texts,
                args.latency_requests,
            )
            # Last: trainings of their own; the latency figures are taken on a quiet worker.
            overhead_root = work / "overhead"
            overhead_root.mkdir()
            overhead = await measure_overhead(
                client, TRAIN_QUEUE, runs_root, overhead_root, OverheadSetup()
            )
            sweeps = await compare_sweeps(
                client, TRAIN_QUEUE, runs_root, sweep_setup, args.sweep_seeds, work
            )
            tokens = await compare_token_inference(client, runs_root, token_setup)
    finally:
        await env.shutdown()
    return Results(training, inference, latencies, overhead, sweeps, tokens)


# ---------------------------------------------------------------------------- the report


def machine() -> str:
    import onnxruntime
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, onnxruntime {onnxruntime.__version__}; load average "
        f"at the end: {load}"
    )


def report(args: argparse.Namespace, r: Results, command: str) -> str:
    rows = (
        training_rows(r.training)
        + inference_rows(r.inference)
        + latency_rows(r.latencies)
        + overhead_rows(r.overhead)
        + sweep_rows(r.sweeps)
        + token_rows(r.tokens)
    )
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (what `make bench` runs).",
        "",
        f"Machine: {machine()}.",
        "",
        f"Setup, all in one process tree: a local Temporal dev server, one training, one "
        f"inference and one floor worker in the bench process. Packaged all-MiniLM-L6-v2 "
        f"(6-layer BERT, 22M parameters) with a new 2-label head; {args.train_rows} tweets, "
        f"1 epoch, batch 16, learning rate 5e-5, max_seq_length 128, seed {SEED}; accuracy on "
        f"{args.eval_rows} held-out tweets. Inference on {args.infer_rows} other tweets, batch "
        f"32, truncation at 128 tokens, every side warmed first; the workflow's texts/s "
        f"include the Temporal round trip. Latency: {args.latency_requests} warm requests per "
        f"call shape, round-robin.",
        "",
        training_notes(r.training),
        "",
        floor_notes(r.latencies),
        "",
        overhead_notes(r.overhead),
        "",
        sweep_notes(r.sweeps),
        "",
        token_notes(r.tokens),
        "",
        "Only the ratios within one run mean anything, and only on an otherwise idle machine: "
        "on a busy one (see the load average) contention slows the sides unevenly (PyTorch's "
        "spinning threads fight other processes differently from ONNX Runtime's sleeping "
        "ones).",
        "",
        "| comparison | ours | baseline | ratio | goal | quality |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    return "\n".join(lines)


def replace_section(path: Path, section: str, text: str) -> None:
    """Replace ``section`` (a ``## `` heading), or put it first, keeping every other section."""
    existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if section in existing:
        start = existing.index(section)
        following = existing.find("\n## ", start + len(section))
        tail = existing[following + 1 :] if following != -1 else ""
        existing = existing[:start] + text + ("\n" + tail if tail else "")
    else:
        head, _, rest = existing.partition("\n## ")
        existing = head.rstrip("\n") + "\n\n" + text + ("\n## " + rest if rest else "")
    path.write_text(existing, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=1024)
    parser.add_argument("--eval-rows", type=int, default=512)
    parser.add_argument("--infer-rows", type=int, default=1024)
    parser.add_argument("--latency-requests", type=int, default=40)
    parser.add_argument(
        "--repeats", type=int, default=2, choices=(1, 2), help="training runs per side"
    )
    parser.add_argument("--sweep-trials", type=int, default=6, help="trials per sweep")
    parser.add_argument("--sweep-epochs", type=int, default=3, help="epochs per sweep trial")
    parser.add_argument("--sweep-rows", type=int, default=512, help="training tweets of a sweep")
    parser.add_argument("--sweep-eval-rows", type=int, default=256)
    parser.add_argument(
        "--sweep-seeds", type=int, nargs="+", default=[42, 43], help="one sweep per side each"
    )
    parser.add_argument(
        "--sweep-pruner",
        choices=("halving", "median"),
        default="halving",
        help="Optuna's pruner on the hyperparameter_search side",
    )
    parser.add_argument(
        "--token-train-rows", type=int, default=1024, help="WNUT-16 tweets the tagger learns"
    )
    parser.add_argument("--token-eval-rows", type=int, default=256)
    parser.add_argument(
        "--token-infer-rows", type=int, default=512, help="held-out tweets both sides tag"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    names = (
        "train_rows",
        "eval_rows",
        "infer_rows",
        "latency_requests",
        "repeats",
        "sweep_trials",
        "sweep_epochs",
        "sweep_rows",
        "sweep_eval_rows",
        "sweep_seeds",
        "sweep_pruner",
        "token_train_rows",
        "token_eval_rows",
        "token_infer_rows",
    )
    command = "python -m bench.compare" + "".join(
        f" --{name.replace('_', '-')} "
        + (" ".join(map(str, value)) if isinstance(value, list) else str(value))
        for name in names
        if (value := getattr(args, name)) != parser.get_default(name)
    )
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        results = asyncio.run(run_all(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(args, results, command)
    print(text)
    if not args.no_write:
        replace_section(DOCS, SECTION, text)
        print(f"written to {DOCS}")


if __name__ == "__main__":
    main()
