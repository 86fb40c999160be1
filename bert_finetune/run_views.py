"""What ``bert-finetune runs`` prints: the runs table, one run's details, or their JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from temporalio.exceptions import ApplicationError

from bert_finetune.client_ops import UserError, graph_precision
from shared.aliases import list_pointers
from shared.onnx_export import CHECK_TEXTS_FILE, has_export, read_check_sample, read_manifest
from shared.run_record import RunRecord
from shared.runs import (
    RunEntry,
    list_runs,
    read_confusion_matrix,
    read_record,
    require_complete_run,
    resolve_served_run,
)
from shared.storage import store_for
from shared.tasks import MAIN_METRIC, MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION

METRIC_COLUMNS = (
    ("acc", "eval_accuracy"),
    ("F1", "eval_f1_macro"),
    ("loss", "eval_loss"),
)
# The task column, and how the table names each task's main metric (``shared.tasks``).
TASK_NAMES = {
    SINGLE_LABEL: "single",
    MULTI_LABEL: "multi",
    REGRESSION: "regression",
    TOKEN_CLASSIFICATION: "tags",
}
METRIC_NAMES = {
    "eval_f1_macro": "F1",
    "eval_f1_micro": "F1 micro",
    "eval_mse": "MSE",
    "eval_f1": "entity F1",
}
# Columns left out, in this order, while the table is wider than the terminal; run_id,
# state and export always stay (then each run is a block of lines when even they do not fit).
DROPPED_FIRST = ("labels", "loss", "acc", "epochs", "task", "aliases", "metric")


def _metric(record: RunRecord | None, name: str) -> str:
    value = record.result.eval_metrics.get(name) if record else None
    if value is None and record is not None and name == "eval_accuracy":
        value = record.result.eval_accuracy  # records written before eval_metrics existed
    return "-" if value is None else f"{value:.3f}"


def export_state(runs_root: Path, run: RunEntry) -> str:
    """The run's ONNX export: the graph served ("int8"/"fp32") when the folder holding its
    model has an export; "pending" when the commit saved the texts for an export that has
    not landed (being built, or it failed: ``bert-finetune export``); "none" otherwise
    (served by PyTorch), a sweep's trials included (only the sweep's best is exported, when
    the sweep ends); "-" for an incomplete run."""
    if run.record is None:
        return "-"
    try:
        # Only the small files: from an object store, a listing downloads no weights.
        model_dir = resolve_served_run(runs_root, run.run_id, weights=False).model_dir
        if has_export(model_dir):
            manifest = read_manifest(model_dir)
            return graph_precision(manifest.served_graph if manifest is not None else None)
        if not (model_dir / CHECK_TEXTS_FILE).is_file():
            return "none"
        sample = read_check_sample(model_dir)
        return "none" if sample is not None and sample.sweep is not None else "pending"
    except (ApplicationError, OSError):  # a reused source that is gone, an unreadable file
        return "none"


def _main_metric(record: RunRecord | None) -> str:
    """The task's main metric, named: ``F1 0.860``, ``MSE 0.412``..."""
    if record is None:
        return "-"
    name = MAIN_METRIC[record.config.task]
    value = record.result.eval_metrics.get(name)
    return "-" if value is None else f"{METRIC_NAMES.get(name, name)} {value:.3f}"


def _labels(record: RunRecord | None) -> str:
    """The labels; a tagger's entity types (its tags without B-/I-); none for regression."""
    if record is None:
        return ""
    if record.config.task == TOKEN_CLASSIFICATION:
        kinds = {name.split("-", 1)[-1] for name in record.label_names if name != "O"}
        return ", ".join(sorted(kinds))
    return ", ".join(record.label_names)


EXPORT_NOTES = {
    "int8": "int8 (ONNX Runtime serves onnx/model.int8.onnx)",
    "fp32": "fp32 (ONNX Runtime serves onnx/model.onnx)",
    "pending": "pending (served by PyTorch until the export lands; if it failed, "
    "`bert-finetune export {run_id}` says why)",
    "none": "none (served by PyTorch; add one with `bert-finetune export {run_id}`)",
}
# A sweep's trial without an export: only the best trial is exported, when the sweep ends.
SWEEP_TRIAL_NOTE = (
    "none (a trial of sweep {sweep}: only the sweep's best trial is exported, when the "
    "sweep ends; add one with `bert-finetune export {run_id}`)"
)


def runs_table(runs_root: Path, as_json: bool, console: Console) -> None:
    """Every run with its state, epochs, metrics, labels, the aliases pointing at it and its
    ONNX export (``export_state``)."""
    runs = list_runs(runs_root)
    pointers = list_pointers(runs_root)
    aliases = {alias: pointer.run_id for alias, pointer in pointers.items()}
    aliases_of = {
        run.run_id: [alias for alias, target in aliases.items() if target == run.run_id]
        for run in runs
    }
    canary_of = {
        run.run_id: [
            {"alias": alias, "percent": pointer.canary_percent}
            for alias, pointer in pointers.items()
            if pointer.canary_run_id == run.run_id
        ]
        for run in runs
    }
    shadow_of = {
        run.run_id: [
            alias for alias, pointer in pointers.items() if pointer.shadow_run_id == run.run_id
        ]
        for run in runs
    }
    listed = set(aliases_of)
    exports = {run.run_id: export_state(runs_root, run) for run in runs}
    dangling_notes = [
        f"alias {alias} points at {target}, which no longer exists: promote another run"
        for alias, target in aliases.items()
        if target not in listed
    ]
    for alias, pointer in pointers.items():
        for kind, target in (("canary", pointer.canary_run_id), ("shadow", pointer.shadow_run_id)):
            if target is not None and target not in listed:
                dangling_notes.append(
                    f"alias {alias}'s {kind} {target} no longer exists: roll it back with "
                    f"`bert-finetune promote {alias} --rollback`"
                )
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {
                        "run_id": run.run_id,
                        "complete": run.complete,
                        "problem": run.problem,
                        "aliases": aliases_of[run.run_id],
                        "canary_of": canary_of[run.run_id],
                        "shadow_of": shadow_of[run.run_id],
                        "export": exports[run.run_id],
                        "record": json.loads(run.record.model_dump_json()) if run.record else None,
                    }
                    for run in runs
                ]
            )
        )
        return
    rows = []
    for run in runs:
        record = run.record
        state = "complete" if record else ("unreadable" if run.problem else "incomplete")
        if record and record.stopped_early:
            state = "complete (stopped early)"
        if record and record.reused_from:
            state = f"reuses {record.reused_from}"
        rows.append(
            {
                "run_id": run.run_id,
                "state": state,
                "task": TASK_NAMES.get(record.config.task, record.config.task) if record else "-",
                "epochs": str(record.trained_epochs()) if record else "-",
                "metric": _main_metric(record),
                "acc": _metric(record, "eval_accuracy"),
                "loss": _metric(record, "eval_loss"),
                "labels": _labels(record),
                "aliases": ", ".join(
                    [f"@{alias}" for alias in aliases_of[run.run_id]]
                    + [f"@{c['alias']} canary {c['percent']}%" for c in canary_of[run.run_id]]
                    + [f"@{alias} shadow" for alias in shadow_of[run.run_id]]
                ),
                "export": exports[run.run_id],
            }
        )
    columns = ["run_id", "state", "task", "epochs", "metric", "acc", "loss", "labels"]
    columns += ["aliases", "export"] if aliases else ["export"]
    store = store_for(runs_root)
    title = f"Runs in {store.uri if store is not None else runs_root}"
    for dropped in range(len(DROPPED_FIRST) + 1):
        shown = [c for c in columns if c not in DROPPED_FIRST[:dropped]]
        widths = {column: _min_width(column, rows) for column in shown}
        # Each column's padding and the borders: 3 characters per column, and one.
        if sum(widths.values()) + 3 * len(shown) + 1 <= console.width:
            console.print(_runs_table(title, dangling_notes, widths, rows))
            return
    _runs_blocks(title, dangling_notes, rows, console)


def _min_width(column: str, rows: list[dict[str, str]]) -> int:
    """The narrowest a column may be: its run ids whole; elsewhere its longest word (cells
    wrap between words, never inside one)."""
    cells = [column, *(row[column] for row in rows)]
    if column == "run_id":
        return max(len(cell) for cell in cells)
    return max(len(word) for cell in cells for word in [*cell.split(), ""])


def _runs_table(
    title: str, notes: list[str], widths: dict[str, int], rows: list[dict[str, str]]
) -> Table:
    """The runs as a table: run ids whole (never wrapped nor cut), the other cells wrapped
    between words."""
    table = Table(
        title=title, caption="\n".join(notes) or None, caption_justify="left", title_justify="left"
    )
    for column, width in widths.items():
        table.add_column(column, no_wrap=column == "run_id", min_width=width)
    for row in rows:
        table.add_row(*(row[column] for column in widths))
    return table


def _runs_blocks(
    title: str, notes: list[str], rows: list[dict[str, str]], console: Console
) -> None:
    """The narrow layout: each run's id on a line of its own, whole, then its details."""
    console.print(title, highlight=False, soft_wrap=True)
    for row in rows:
        console.print(row["run_id"], highlight=False, soft_wrap=True, style="bold")
        details = [row["state"]]
        if row["task"] != "-":
            details.append(f"{row['task']}, {row['epochs']} epochs")
        details += [row["metric"]] if row["metric"] != "-" else []
        details += [f"acc {row['acc']}"] if row["acc"] != "-" else []
        details += [f"loss {row['loss']}"] if row["loss"] != "-" else []
        details += [row["aliases"]] if row["aliases"] else []
        details.append(f"export {row['export']}")
        console.print(Padding("; ".join(details), (0, 0, 0, 2)), highlight=False)
        if row["labels"]:
            console.print(Padding(f"labels: {row['labels']}", (0, 0, 0, 2)), highlight=False)
    for note in notes:
        console.print(note, highlight=False)


def _export_note(run_dir: Path, run_id: str, export: str) -> str:
    if export == "none":
        sample = read_check_sample(run_dir)
        if sample is not None and sample.sweep is not None:
            return SWEEP_TRIAL_NOTE.format(sweep=sample.sweep, run_id=run_id)
    return EXPORT_NOTES[export].format(run_id=run_id) if export in EXPORT_NOTES else export


def _epochs_trained(record: RunRecord) -> str:
    """``3 of 8 (stopped early)`` for a pruned sweep trial, ``5 of 8 (early stopping: ...)``
    for a run its patience ended (a finished run)."""
    config = record.config
    if record.patience_stopped():
        return (
            f"{record.epochs_completed} of {config.num_epochs} (early stopping: "
            f"{config.best_model_metric()} did not improve for "
            f"{config.early_stopping_patience} epochs)"
        )
    return f"{record.trained_epochs()} of {config.num_epochs}" + (
        " (stopped early)" if record.stopped_early else ""
    )


def _baseline(metrics: dict[str, float]) -> str:
    """The trivial predictor's metrics (majority class, most frequent label set, training
    mean, all O), to compare the run's with."""
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def show_run(runs_root: Path, run_id: str, as_json: bool, console: Console) -> None:
    """One finished run: its config, export, final metrics, per-epoch evaluations, confusion
    matrix."""
    try:
        run_dir = require_complete_run(runs_root, run_id)
        record = read_record(run_dir)
    except ApplicationError as err:
        raise UserError(err.message, err.type) from None
    if store_for(runs_root) is not None:
        # The store's commit (its small files) holds what the local mirror does not.
        try:
            run_dir = resolve_served_run(runs_root, run_id, weights=False).model_dir
        except ApplicationError as err:
            raise UserError(err.message, err.type) from None
    # In its own file since it left run.json; older records still hold it.
    confusion = read_confusion_matrix(run_dir, record)
    if as_json:
        console.print_json(
            record.model_copy(update={"confusion_matrix": confusion}).model_dump_json()
        )
        return
    export = export_state(runs_root, RunEntry(run_id, record))
    result = record.result
    summary = Table(title=f"Run {run_id}", show_header=False)
    summary.add_column("field")
    summary.add_column("value")
    rows = {
        "model": record.config.model_name,
        "epochs trained": _epochs_trained(record),
        "reuses the model of": record.reused_from or "-",
        "task": record.config.task,
        "ONNX export": _export_note(run_dir, run_id, export),
        "train loss": f"{result.train_loss:.4f}",
        "train samples/s": f"{result.train_samples_per_second:.1f}",
        "majority baseline": "-"
        if result.majority_baseline_accuracy is None
        else f"{result.majority_baseline_accuracy:.3f}",
        **({"best epoch kept": str(result.best_epoch)} if result.best_epoch else {}),
        **{name: f"{value:.4f}" for name, value in result.eval_metrics.items()},
        **({"baseline": _baseline(result.baseline_metrics)} if result.baseline_metrics else {}),
        "schema version": str(record.schema_version),
    }
    for field, value in rows.items():
        summary.add_row(field, value)
    console.print(summary)
    if record.eval_history:
        history = Table(title="Evaluation by epoch")
        names = list(record.eval_history[-1].metrics)
        for column in ("epoch", "step", *names):
            history.add_column(column)
        for entry in record.eval_history:
            history.add_row(
                str(entry.epoch),
                str(entry.global_step),
                *(f"{entry.metrics[n]:.4f}" if n in entry.metrics else "-" for n in names),
            )
        console.print(history)
    if confusion:
        matrix = Table(title="Confusion matrix (rows: true label, columns: predicted)")
        matrix.add_column("")
        for name in record.label_names:
            matrix.add_column(name)
        for name, row in zip(record.label_names, confusion, strict=False):
            matrix.add_row(name, *(str(count) for count in row))
        console.print(matrix)
