"""What ``bert-finetune runs`` prints: the runs table, one run's details, or their JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from temporalio.exceptions import ApplicationError

from bert_finetune.client_ops import UserError
from shared.aliases import list_aliases
from shared.run_record import RunRecord
from shared.runs import list_runs, read_record, require_complete_run

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


def runs_table(runs_root: Path, as_json: bool, console: Console) -> None:
    """Every run with its state, epochs, metrics, labels and the aliases pointing at it."""
    runs = list_runs(runs_root)
    aliases = list_aliases(runs_root)
    aliases_of = {
        run.run_id: [alias for alias, target in aliases.items() if target == run.run_id]
        for run in runs
    }
    listed = set(aliases_of)
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
    columns = ("run_id", "state", "epochs", *(c for c, _ in METRIC_COLUMNS), "labels", "aliases")
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
        )
    console.print(table)


def show_run(runs_root: Path, run_id: str, as_json: bool, console: Console) -> None:
    """One finished run: its config, final metrics, per-epoch evaluations, confusion matrix."""
    try:
        record = read_record(require_complete_run(runs_root, run_id))
    except ApplicationError as err:
        raise UserError(err.message, err.type) from None
    if as_json:
        console.print_json(record.model_dump_json())
        return
    result = record.result
    summary = Table(title=f"Run {run_id}", show_header=False)
    summary.add_column("field")
    summary.add_column("value")
    rows = {
        "model": record.config.model_name,
        "epochs trained": f"{record.trained_epochs()} of {record.config.num_epochs}"
        + (" (stopped early)" if record.stopped_early else ""),
        "reuses the model of": record.reused_from or "-",
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
    if record.confusion_matrix:
        matrix = Table(title="Confusion matrix (rows: true label, columns: predicted)")
        matrix.add_column("")
        for name in record.label_names:
            matrix.add_column(name)
        for name, row in zip(record.label_names, record.confusion_matrix, strict=False):
            matrix.add_row(name, *(str(count) for count in row))
        console.print(matrix)
