"""What ``bert-finetune runs`` prints: the runs table, one run's details, or their JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from temporalio.exceptions import ApplicationError

from bert_finetune.client_ops import UserError, graph_precision
from shared.aliases import list_aliases
from shared.onnx_export import CHECK_TEXTS_FILE, has_export, read_manifest
from shared.run_record import RunRecord
from shared.runs import (
    RunEntry,
    list_runs,
    read_confusion_matrix,
    read_record,
    require_complete_run,
    resolve_served_run,
)

METRIC_COLUMNS = (
    ("acc", "eval_accuracy"),
    ("F1", "eval_f1_macro"),
    ("loss", "eval_loss"),
)


def _metric(record: RunRecord | None, name: str) -> str:
    value = record.result.eval_metrics.get(name) if record else None
    if value is None and record is not None and name == "eval_accuracy":
        value = record.result.eval_accuracy  # records written before eval_metrics existed
    return "-" if value is None else f"{value:.3f}"


def export_state(runs_root: Path, run: RunEntry) -> str:
    """The run's ONNX export: the graph served ("int8"/"fp32") when the folder holding its
    model has an export; "pending" when the commit saved the texts for an export that has
    not landed (being built, or it failed: ``bert-finetune export``); "none" otherwise
    (served by PyTorch); "-" for an incomplete run."""
    if run.record is None:
        return "-"
    try:
        model_dir = resolve_served_run(runs_root, run.run_id).model_dir
        if has_export(model_dir):
            manifest = read_manifest(model_dir)
            return graph_precision(manifest.served_graph if manifest is not None else None)
        return "pending" if (model_dir / CHECK_TEXTS_FILE).is_file() else "none"
    except (ApplicationError, OSError):  # a reused source that is gone, an unreadable file
        return "none"


EXPORT_NOTES = {
    "int8": "int8 (ONNX Runtime serves onnx/model.int8.onnx)",
    "fp32": "fp32 (ONNX Runtime serves onnx/model.onnx)",
    "pending": "pending (served by PyTorch until the export lands; if it failed, "
    "`bert-finetune export {run_id}` says why)",
    "none": "none (served by PyTorch; add one with `bert-finetune export {run_id}`)",
}


def runs_table(runs_root: Path, as_json: bool, console: Console) -> None:
    """Every run with its state, epochs, metrics, labels, the aliases pointing at it and its
    ONNX export (``export_state``)."""
    runs = list_runs(runs_root)
    aliases = list_aliases(runs_root)
    aliases_of = {
        run.run_id: [alias for alias, target in aliases.items() if target == run.run_id]
        for run in runs
    }
    listed = set(aliases_of)
    exports = {run.run_id: export_state(runs_root, run) for run in runs}
    dangling = {alias: target for alias, target in aliases.items() if target not in listed}
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {
                        "run_id": run.run_id,
                        "complete": run.complete,
                        "problem": run.problem,
                        "aliases": aliases_of[run.run_id],
                        "export": exports[run.run_id],
                        "record": json.loads(run.record.model_dump_json()) if run.record else None,
                    }
                    for run in runs
                ]
            )
        )
        return
    table = Table(
        title=f"Runs in {runs_root}",
        caption="\n".join(
            f"alias {alias} points at {target}, which no longer exists: promote another run"
            for alias, target in dangling.items()
        )
        or None,
        caption_justify="left",
    )
    columns = (
        "run_id",
        "state",
        "epochs",
        *(c for c, _ in METRIC_COLUMNS),
        "labels",
        "aliases",
        "export",
    )
    for column in columns:
        table.add_column(column)
    for run in runs:
        record = run.record
        state = "complete" if record else ("unreadable" if run.problem else "incomplete")
        if record and record.stopped_early:
            state = "complete (stopped early)"
        if record and record.reused_from:
            state = f"reuses {record.reused_from}"
        table.add_row(
            run.run_id,
            state,
            str(record.trained_epochs()) if record else "-",
            *(_metric(record, name) for _, name in METRIC_COLUMNS),
            ", ".join(record.label_names) if record else "",
            ", ".join(f"@{alias}" for alias in aliases_of[run.run_id]),
            exports[run.run_id],
        )
    console.print(table)


def show_run(runs_root: Path, run_id: str, as_json: bool, console: Console) -> None:
    """One finished run: its config, export, final metrics, per-epoch evaluations, confusion
    matrix."""
    try:
        run_dir = require_complete_run(runs_root, run_id)
        record = read_record(run_dir)
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
        "epochs trained": f"{record.trained_epochs()} of {record.config.num_epochs}"
        + (" (stopped early)" if record.stopped_early else ""),
        "reuses the model of": record.reused_from or "-",
        "ONNX export": EXPORT_NOTES[export].format(run_id=run_id)
        if export in EXPORT_NOTES
        else export,
        "train loss": f"{result.train_loss:.4f}",
        "train samples/s": f"{result.train_samples_per_second:.1f}",
        "majority baseline": "-"
        if result.majority_baseline_accuracy is None
        else f"{result.majority_baseline_accuracy:.3f}",
        **{name: f"{value:.4f}" for name, value in result.eval_metrics.items()},
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
