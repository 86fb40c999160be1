"""Sweeps: ``BertSweepWorkflow`` (TPE, successive halving) vs the Hugging Face Trainer's own
``Trainer.hyperparameter_search(backend="optuna")`` (TPE, Optuna's successive-halving pruner).

Both sides search the same space (learning rate log-uniform, weight decay uniform) with the
same number of trials, epochs, rows, batch size, sampler seed and training seed, on one
trainer (one trial at a time: ``max_concurrent_trials`` 1 on our side). Both evaluate after
every epoch and prune at the ends of epochs 1, 2, 4, ... with reduction factor 2 (Optuna's
``SuccessiveHalvingPruner`` with ``min_resource`` one epoch of steps, or ``MedianPruner``).
TPE starts model-guided proposals after the same number of random trials on both sides
(``sweep_rules.tpe_startup_trials``). Each side is timed from its start to the end of the
sweep: theirs from loading the CSVs (tokenizing once, a model per trial through
``model_init``), ours from starting the workflow to its result (a child workflow per trial,
each loading, tokenizing through the runs root's token cache, training, evaluating and
committing its model). Our tokenized-dataset cache is emptied before each timed sweep, so
every sweep starts as a first sweep on new data. The best trial's ONNX export, which our
sweep starts as it ends, is waited for untimed before the next step.

Reported per side: wall time, best eval accuracy (complete trials only: Optuna's
``best_value``, the best trial's final epoch; ours, the best trial's committed model, its best
epoch with ``keep_best_epoch``; their best epoch of any complete trial is listed beside), trials
pruned, epochs trained and seconds per trained epoch (wall / epochs trained: every cost of a
trial, orchestration included, spread over the epochs it trained).

``make bench`` runs this in ``bench.compare`` (with its shared workers); standalone, it
starts its own Temporal dev server and one in-process trainer worker:

    python -m bench.sweep_compare [--trials 6] [--epochs 3] [--rows 512] [--eval-rows 256]
                                  [--seeds 42 43] [--pruner halving|median] [--write FILE]
    python -m bench.sweep_compare --smoke    # the tiny BERT of the tests, a minute or two
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.bench_data import LABELS, SPLIT_SEED, Row, step, temporal_cli, verdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTION = "## Sweep vs `Trainer.hyperparameter_search` (standalone)"
# The searched fields, the same ranges on both sides. Not warmup_ratio: the Trainer's
# search casts each value to the type of the argument's default, and warmup_steps defaults
# to the integer 0, so any warmup fraction would silently become 0 on their side.
LEARNING_RATE = (1e-5, 2e-4)  # log-uniform
WEIGHT_DECAY = (0.0, 0.1)  # uniform
REDUCTION_FACTOR = 2
# Goals (issue 24), on every seed.
WALL_GOAL = 0.8
EPOCH_GOAL = 0.9
METRIC_SLACK = 0.01


@dataclass(frozen=True)
class SweepSetup:
    model_dir: Path
    train_csv: Path
    eval_csv: Path
    rows: int
    eval_rows: int
    trials: int
    epochs: int
    batch_size: int = 16
    max_seq_length: int = 128
    pruner: str = "halving"  # their side: "halving" or "median"
    data_name: str = "tweets"  # what the rows are, for the report


@dataclass(frozen=True)
class SweepFigures:
    side: str  # "ours" or "theirs"
    seed: int
    wall_seconds: float
    best_metric: float | None  # eval accuracy of the model the best complete trial yields
    trials: int
    pruned: int
    epochs_trained: int
    # Theirs only: the best epoch's accuracy of any complete trial (what
    # ``load_best_model_at_end`` would have kept, had it saved a checkpoint every epoch).
    best_epoch_metric: float | None = None

    @property
    def seconds_per_epoch(self) -> float:
        return self.wall_seconds / max(1, self.epochs_trained)

    def describe(self) -> str:
        best = "none" if self.best_metric is None else f"{self.best_metric:.3f}"
        if self.best_epoch_metric is not None:
            best += f" (best epoch of a complete trial {self.best_epoch_metric:.3f})"
        return (
            f"{self.wall_seconds:.1f} s, best {best}, {self.pruned} of {self.trials} pruned, "
            f"{self.epochs_trained} epochs ({self.seconds_per_epoch:.2f} s/epoch)"
        )


@dataclass
class SweepComparison:
    setup: SweepSetup
    pairs: list[tuple[SweepFigures, SweepFigures]]  # (ours, theirs) per seed, in seed order
    order: list[SweepFigures]  # every timed run in the order it ran


# ------------------------------------------------------------------------------- the data


def prepare_sweep_data(folder: Path, rows: int, eval_rows: int) -> tuple[Path, Path]:
    """``rows`` training and ``eval_rows`` evaluation tweets (``text``, ``label``)."""
    import random

    from bert_finetune.demo_data import tweet_rows

    data = tweet_rows()
    random.Random(SPLIT_SEED).shuffle(data)
    if len(data) < rows + eval_rows:
        raise SystemExit(f"only {len(data)} labelled tweets, {rows + eval_rows} needed")
    return _write_split(folder, data[:rows], data[rows : rows + eval_rows])


def prepare_tiny_data(folder: Path, rows: int, eval_rows: int) -> tuple[Path, Path]:
    """The tests' synthetic sentences (the tiny BERT's vocabulary), same labels."""
    from tests.tiny import sentiment_rows

    return _write_split(
        folder,
        sentiment_rows(rows, seed=1, string_labels=True),
        sentiment_rows(eval_rows, seed=2, string_labels=True),
    )


def _write_split(folder: Path, train: list[Any], evaluation: list[Any]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train.csv", train), ("validation.csv", evaluation)):
        path = folder / name
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        paths.append(path)
    return paths[0], paths[1]


# ----------------------------------------------------------------------------- their side


def search_with_trainer(setup: SweepSetup, seed: int, out: Path) -> SweepFigures:
    """What a Hugging Face user writes: ``Trainer`` with ``model_init``, per-epoch
    evaluation, ``hyperparameter_search(backend="optuna")`` with a TPE sampler and a
    pruner; timed from loading the data to the search's return."""
    import datasets
    import numpy as np
    import optuna
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from services.trainer.orchestration.sweep_rules import tpe_startup_trials

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    raw = datasets.load_dataset(
        "csv", data_files={"train": str(setup.train_csv), "eval": str(setup.eval_csv)}
    )
    raw = raw.map(lambda row: {"labels": LABELS.index(row["label"])}, remove_columns=["label"])
    tokenizer = AutoTokenizer.from_pretrained(str(setup.model_dir))
    encoded = raw.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=setup.max_seq_length),
        batched=True,
        remove_columns=["text"],
    )

    def model_init(trial: Any = None) -> Any:
        return AutoModelForSequenceClassification.from_pretrained(
            str(setup.model_dir),
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={name: i for i, name in enumerate(LABELS)},
        )

    def accuracy(prediction: Any) -> dict[str, float]:
        predicted = np.argmax(prediction.predictions, axis=-1)
        return {"accuracy": float((predicted == prediction.label_ids).mean())}

    def hp_space(trial: Any) -> dict[str, float]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY),
        }

    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=setup.epochs,
        per_device_train_batch_size=setup.batch_size,
        per_device_eval_batch_size=32,  # ours: services.trainer.training.arguments
        eval_strategy="epoch",  # the pruner sees every epoch's accuracy
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
        logging_strategy="epoch",
    )
    trainer = Trainer(
        model_init=model_init,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["eval"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    trainer.remove_callback(PrinterCallback)
    steps_per_epoch = -(-setup.rows // setup.batch_size)  # the Trainer reports global steps
    if setup.pruner == "median":
        pruner: Any = optuna.pruners.MedianPruner(n_startup_trials=1)
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=steps_per_epoch, reduction_factor=REDUCTION_FACTOR
        )
    storage = optuna.storages.InMemoryStorage()
    study_name = f"hf-{seed}-{uuid.uuid4().hex[:8]}"
    trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics["eval_accuracy"],
        n_trials=setup.trials,
        direction="maximize",
        backend="optuna",
        sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=tpe_startup_trials(setup.trials)
        ),
        pruner=pruner,
        storage=storage,
        study_name=study_name,
    )
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=study_name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return SweepFigures(
        side="theirs",
        seed=seed,
        wall_seconds=wall,
        best_metric=max((float(t.value) for t in complete), default=None),
        best_epoch_metric=max(
            (float(v) for t in complete for v in t.intermediate_values.values()), default=None
        ),
        trials=len(study.trials),
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        # One report per evaluated epoch; a pruned trial stops at the epoch it reported.
        epochs_trained=sum(len(t.intermediate_values) for t in study.trials),
    )


# ------------------------------------------------------------------------------- our side


def sweep_input(setup: SweepSetup, seed: int, name: str) -> dict[str, Any]:
    return {
        "sweep_name": name,
        "base": {
            "model_name": str(setup.model_dir),
            "train_file": str(setup.train_csv),
            "validation_file": str(setup.eval_csv),
            "text_column": "text",
            "label_column": "label",
            "num_epochs": setup.epochs,
            "batch_size": setup.batch_size,
            "max_seq_length": setup.max_seq_length,
            "seed": seed,
            "use_gpu": False,
            # Each trial commits its best epoch's model (kept in memory, copied into the
            # checkpoints it saves anyway), and reports that epoch's accuracy.
            "keep_best_epoch": True,
        },
        "space": {
            "learning_rate": {"min": LEARNING_RATE[0], "max": LEARNING_RATE[1], "log": True},
            "weight_decay": {"min": WEIGHT_DECAY[0], "max": WEIGHT_DECAY[1]},
        },
        "strategy": "tpe",
        "num_trials": setup.trials,
        "max_concurrent_trials": 1,
        "metric": "eval_accuracy",
        "early_stopping": {
            "type": "successive_halving",
            "reduction_factor": REDUCTION_FACTOR,
            "min_epochs": 1,
        },
        "seed": seed,
        # Train every trial: never reuse an earlier sweep's finished run of equal config.
        "overwrite": True,
    }


def clear_token_cache(runs_root: Path) -> None:
    """Empty the runs root's tokenized-dataset cache (a first sweep on new data)."""
    try:
        from services.trainer.training.token_cache import CACHE_DIR
    except ImportError:  # a trainer without the cache
        return
    shutil.rmtree(runs_root / CACHE_DIR, ignore_errors=True)


async def sweep_with_workflow(
    client: Any, queue: str, runs_root: Path, setup: SweepSetup, seed: int
) -> SweepFigures:
    """One ``BertSweepWorkflow``, timed from its start to its result."""
    from shared.sweep_types import SWEEP_WORKFLOW, BertSweepInput, BertSweepOutput

    sweep = BertSweepInput.model_validate(
        sweep_input(setup, seed, f"bench-sweep-{seed}-{uuid.uuid4().hex[:6]}")
    )
    clear_token_cache(runs_root)
    started = time.perf_counter()
    output = await client.execute_workflow(
        SWEEP_WORKFLOW,
        sweep,
        id=sweep.sweep_name,
        task_queue=queue,
        result_type=BertSweepOutput,
    )
    wall = time.perf_counter() - started
    if output.best_run_id is not None:
        await wait_for_export(client, output.best_run_id)
    return SweepFigures(
        side="ours",
        seed=seed,
        wall_seconds=wall,
        best_metric=output.best_metric,
        trials=len(output.trials),
        pruned=sum(t.state == "pruned" for t in output.trials),
        epochs_trained=sum(t.epochs_completed for t in output.trials),
    )


async def wait_for_export(client: Any, run_id: str) -> None:
    """Untimed: the best trial's export, which the sweep started as it ended, must not run
    beside the next measurement."""
    from temporalio.service import RPCError

    from shared.export_types import export_workflow_id

    try:
        await client.get_workflow_handle(export_workflow_id(run_id)).result()
    except RPCError:  # not started (a trainer that does not export sweeps)
        pass
    except Exception as err:  # a failed export does not change the sweep's figures
        step(f"sweeps: the best trial's export failed ({type(err).__name__}); going on")


# ---------------------------------------------------------------------------- the comparison


async def compare_sweeps(
    client: Any,
    queue: str,
    runs_root: Path,
    setup: SweepSetup,
    seeds: list[int],
    work: Path,
) -> SweepComparison:
    """An untimed warm-up of each side, then both sides on every seed, interleaved
    (theirs, ours; ours, theirs; ...) so a drift of the machine lands on both alike."""
    warm_rows = min(64, setup.rows)
    warm_train, warm_eval = _head_split(work / "sweep-warm-up", setup, warm_rows, 32)
    warm = replace(
        setup, train_csv=warm_train, eval_csv=warm_eval, rows=warm_rows, trials=2, epochs=2
    )
    warm_seed = max(seeds) + 1000  # no timed sweep proposes what the warm-up trained
    step("sweeps: warm-up, untimed (2 trials, 2 epochs, 64 rows on each side)")
    await asyncio.to_thread(search_with_trainer, warm, warm_seed, work / "hf-warm-up")
    await sweep_with_workflow(client, queue, runs_root, warm, warm_seed)

    order: list[SweepFigures] = []
    pairs: list[tuple[SweepFigures, SweepFigures]] = []
    for index, seed in enumerate(seeds):
        sides = ["theirs", "ours"] if index % 2 == 0 else ["ours", "theirs"]
        figures: dict[str, SweepFigures] = {}
        for side in sides:
            if side == "theirs":
                step(f"sweeps: Trainer.hyperparameter_search, optuna (seed {seed})")
                out = work / f"hf-search-{seed}"
                result = await asyncio.to_thread(search_with_trainer, setup, seed, out)
                shutil.rmtree(out, ignore_errors=True)
            else:
                step(f"sweeps: BertSweepWorkflow (seed {seed})")
                result = await sweep_with_workflow(client, queue, runs_root, setup, seed)
            step(f"sweeps: {side}, seed {seed}: {result.describe()}")
            figures[side] = result
            order.append(result)
        pairs.append((figures["ours"], figures["theirs"]))
    return SweepComparison(setup, pairs, order)


def _head_split(folder: Path, setup: SweepSetup, rows: int, eval_rows: int) -> tuple[Path, Path]:
    """The first rows of the setup's own files (a different file: its own cache key)."""
    with setup.train_csv.open(encoding="utf-8", newline="") as handle:
        train = list(csv.reader(handle))[1 : rows + 1]
    with setup.eval_csv.open(encoding="utf-8", newline="") as handle:
        evaluation = list(csv.reader(handle))[1 : eval_rows + 1]
    return _write_split(folder, train, evaluation)


# ------------------------------------------------------------------------------- the report


def _met_on_every_seed(s: SweepComparison) -> tuple[bool, bool, bool]:
    wall = all(o.wall_seconds <= WALL_GOAL * t.wall_seconds for o, t in s.pairs)
    epoch = all(o.seconds_per_epoch <= EPOCH_GOAL * t.seconds_per_epoch for o, t in s.pairs)
    metric = all(
        o.best_metric is not None
        and t.best_metric is not None
        and o.best_metric >= t.best_metric - METRIC_SLACK
        for o, t in s.pairs
    )
    return wall, epoch, metric


def sweep_rows(s: SweepComparison) -> list[Row]:
    wall_ok, epoch_ok, metric_ok = _met_on_every_seed(s)
    ours = [o for o, _ in s.pairs]
    theirs = [t for _, t in s.pairs]

    def mean(figures: list[SweepFigures], attribute: str) -> float:
        return statistics.fmean(getattr(f, attribute) for f in figures)

    def ratios(attribute: str) -> str:
        return " / ".join(
            f"{getattr(o, attribute) / getattr(t, attribute):.2f}x" for o, t in s.pairs
        )

    def bests(figures: list[SweepFigures]) -> str:
        return " / ".join("-" if f.best_metric is None else f"{f.best_metric:.3f}" for f in figures)

    seeds = ", ".join(str(o.seed) for o in ours)
    what = f"{s.setup.trials} trials, {s.setup.epochs} epochs, {s.setup.rows} rows"
    all_met = wall_ok and epoch_ok and metric_ok
    return [
        (
            f"sweep wall s ({what}): `BertSweepWorkflow` vs `Trainer.hyperparameter_search` "
            f"(optuna), per seed ({seeds})",
            " / ".join(f"{o.wall_seconds:.1f}" for o in ours),
            " / ".join(f"{t.wall_seconds:.1f}" for t in theirs),
            ratios("wall_seconds"),
            f"≤ {WALL_GOAL}x on each seed: {verdict(wall_ok)}",
            f"trials pruned {' / '.join(str(o.pruned) for o in ours)} vs "
            f"{' / '.join(str(t.pruned) for t in theirs)}",
        ),
        (
            "sweep s per trained epoch (wall / epochs trained): ours vs theirs, per seed",
            " / ".join(f"{o.seconds_per_epoch:.2f}" for o in ours),
            " / ".join(f"{t.seconds_per_epoch:.2f}" for t in theirs),
            ratios("seconds_per_epoch"),
            f"≤ {EPOCH_GOAL}x on each seed: {verdict(epoch_ok)}",
            f"epochs trained {' / '.join(str(o.epochs_trained) for o in ours)} vs "
            f"{' / '.join(str(t.epochs_trained) for t in theirs)}",
        ),
        (
            "sweep best eval accuracy: ours vs theirs, per seed",
            bests(ours),
            bests(theirs),
            "",
            f"≥ theirs − {METRIC_SLACK} on each seed: {verdict(metric_ok)}",
            f"means {mean(ours, 'wall_seconds'):.1f} s vs {mean(theirs, 'wall_seconds'):.1f} s; "
            f"all three goals: {verdict(all_met)}",
        ),
    ]


def sweep_notes(s: SweepComparison) -> str:
    """The report's paragraph on how the sweeps ran, every timed run listed."""
    setup = s.setup
    pruner = (
        f"`SuccessiveHalvingPruner(min_resource={-(-setup.rows // setup.batch_size)} steps = "
        f"1 epoch, reduction_factor={REDUCTION_FACTOR})`"
        if setup.pruner == "halving"
        else "`MedianPruner(n_startup_trials=1)`"
    )
    return (
        f"Sweeps: {setup.rows} training and {setup.eval_rows} evaluation {setup.data_name}, "
        f"{setup.trials} trials of up to {setup.epochs} epochs, batch {setup.batch_size}, "
        f"max_seq_length {setup.max_seq_length}; learning rate log-uniform in "
        f"[{LEARNING_RATE[0]:g}, {LEARNING_RATE[1]:g}], weight decay uniform in "
        f"[{WEIGHT_DECAY[0]:g}, {WEIGHT_DECAY[1]:g}]; TPE with the seed as sampler and "
        f"training seed on both sides. Theirs: `Trainer.hyperparameter_search(backend="
        f'"optuna", direction="maximize")` with `model_init`, `eval_strategy="epoch"`, '
        f"dynamic padding and {pruner}. Ours: `BertSweepWorkflow`, strategy tpe, successive "
        f"halving (factor {REDUCTION_FACTOR}, from epoch 1), `max_concurrent_trials` 1, "
        "`group_by_length` (the default), `keep_best_epoch` (each trial commits, and reports, "
        "its best epoch's model; rung decisions still compare each rung's own evaluation), "
        "token cache emptied first. Their best is Optuna's `best_value`, the final epoch of "
        "the best complete trial: the Trainer keeps a better epoch only with "
        "`load_best_model_at_end`, which saves a checkpoint every epoch (not timed here); "
        "each of their runs below also lists the best epoch of any complete trial, the most "
        "that option could keep. One untimed warm-up "
        "sweep per side, then each seed on both sides, interleaved; seconds per trained "
        "epoch = wall / epochs trained. Every timed run, in order: "
        + "; ".join(f"{f.side} seed {f.seed}: {f.describe()}" for f in s.order)
        + "."
    )


# --------------------------------------------------------------------------- standalone


async def _standalone(args: argparse.Namespace, work: Path) -> SweepComparison:
    from datetime import timedelta

    from temporalio.testing import WorkflowEnvironment

    from services.trainer.worker import build_trainer_worker
    from shared.converter import data_converter
    from shared.logging import configure_logging

    configure_logging("WARNING", "console")
    if args.smoke:
        from tests.tiny import build_tiny_bert

        model_dir = build_tiny_bert(work / "tiny-bert")
        train_csv, eval_csv = prepare_tiny_data(work / "data", args.rows, args.eval_rows)
    else:
        from bert_finetune.demo_data import minilm_model_dir

        model_dir = minilm_model_dir()
        train_csv, eval_csv = prepare_sweep_data(work / "data", args.rows, args.eval_rows)
    setup = SweepSetup(
        model_dir=model_dir,
        train_csv=train_csv,
        eval_csv=eval_csv,
        rows=args.rows,
        eval_rows=args.eval_rows,
        trials=args.trials,
        epochs=args.epochs,
        max_seq_length=32 if args.smoke else 128,
        pruner=args.pruner,
        data_name="synthetic rows (smoke)" if args.smoke else "tweets",
    )
    runs_root = work / "runs"
    runs_root.mkdir()
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter,
        dev_server_existing_path=temporal_cli(),
        dev_server_log_level="error",
    )
    async with env:
        queue = f"bench-sweep-{uuid.uuid4()}"
        worker = build_trainer_worker(
            env.client,
            task_queue=queue,
            runs_root=runs_root,
            graceful_shutdown=timedelta(seconds=5),
            local_path_roots=[work, model_dir],
        )
        async with worker:
            return await compare_sweeps(env.client, queue, runs_root, setup, args.seeds, work)


def _standalone_report(args: argparse.Namespace, s: SweepComparison, command: str) -> str:
    lines = [SECTION, "", f"Command: `{command}`", "", sweep_notes(s), ""]
    lines += ["| comparison | ours | baseline | ratio | goal | quality |"]
    lines += ["|---|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in sweep_rows(s)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=512, help="training tweets")
    parser.add_argument("--eval-rows", type=int, default=256, help="evaluation tweets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--pruner", choices=("halving", "median"), default="halving")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check the code, not the speed: the tests' tiny BERT, 3 trials, 2 epochs, "
        "32 rows, one seed (about a minute)",
    )
    parser.add_argument("--write", type=Path, help="replace this section of a markdown file")
    args = parser.parse_args()
    if args.smoke:
        if args.write:
            parser.error("--smoke measures nothing worth writing")
        args.trials, args.epochs, args.rows, args.eval_rows = 3, 2, 32, 16
        args.seeds = args.seeds[:1]
    command = "python -m bench.sweep_compare" + (
        " --smoke"
        if args.smoke
        else f" --trials {args.trials} --epochs {args.epochs} --rows {args.rows} "
        f"--eval-rows {args.eval_rows} --seeds {' '.join(map(str, args.seeds))} "
        f"--pruner {args.pruner}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        comparison = asyncio.run(_standalone(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = _standalone_report(args, comparison, command)
    print(text)
    if args.write:
        from bench.compare import replace_section

        replace_section(args.write, SECTION, text)
        print(f"written to {args.write}")


if __name__ == "__main__":
    main()
