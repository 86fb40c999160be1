"""What the CLI does through Temporal: start and watch experiments, predict, promote, export,
cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any, TypeVar

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from shared.errors import INVALID_CONFIG, describe_validation_error, one_line
from shared.export_types import (
    EXPORT_WORKFLOW,
    BertExportInput,
    BertExportOutput,
    export_workflow_id,
)
from shared.onnx_export import FP32_GRAPH, INT8_GRAPH
from shared.sweep_types import SWEEP_WORKFLOW, BertSweepInput, BertSweepOutput, SweepProgress
from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION
from shared.types import (
    FINE_TUNING_WORKFLOW,
    INFERENCE_WORKFLOW,
    MAX_INFERENCE_PAYLOAD_BYTES,
    PROGRESS_QUERY,
    PROMOTE_WORKFLOW,
    BertExperimentInput,
    BertExperimentOutput,
    BertInferenceRequest,
    BertInferenceResult,
    BertPromoteInput,
    BertPromoteOutput,
    ExperimentProgress,
    inference_payload_bytes,
)

T = TypeVar("T", bound=BaseModel)

# Keep each inference request well under the workflow's payload budget.
PREDICT_CHUNK_BYTES = MAX_INFERENCE_PAYLOAD_BYTES // 2
# The first request of a large input: one batch (a local activity on a warm worker), whose
# result says the run's task; the others are sized for what that task returns per text.
FIRST_CHUNK_TEXTS = 32


class UserError(Exception):
    """A problem the user can fix; the CLI prints it as one line.

    ``error_type`` is the failure type (docs/errors.md) the workflow would have failed with,
    so a problem caught before anything is sent reads the same as one a worker reports.
    """

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type

    def __str__(self) -> str:
        message = super().__str__()
        return f"[{self.error_type}] {message}" if self.error_type else message


def _load_spec(path: Path, expected: str) -> dict[str, Any]:
    """The JSON or YAML object in ``path``; ``expected`` names its fields for the error."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise UserError(f"file {str(path)!r} {problem}")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (ValueError, yaml.YAMLError) as err:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        detail = " ".join(str(err).split())
        raise UserError(f"{path}: not valid {kind}: {detail}", INVALID_CONFIG) from None
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: expected an object with {expected}, got {type(raw).__name__}",
            INVALID_CONFIG,
        )
    return raw


def _validated(model: type[T], raw: dict[str, Any], path: Path) -> T:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{path}: {describe_validation_error(err)}", INVALID_CONFIG) from None


def load_experiment(path: Path, overwrite: bool = False) -> BertExperimentInput:
    raw = _load_spec(path, "experiment_name and runs")
    if overwrite:
        raw["overwrite"] = True
    return _validated(BertExperimentInput, raw, path)


def load_sweep(path: Path, overwrite: bool = False) -> BertSweepInput:
    raw = _load_spec(path, "sweep_name, base and space")
    if overwrite:
        raw["overwrite"] = True
    return _validated(BertSweepInput, raw, path)


def experiment_workflow_id(experiment_name: str) -> str:
    return f"bert-experiment-{experiment_name}"


async def start_experiment(
    client: Client, experiment: BertExperimentInput, task_queue: str, workflow_id: str | None
) -> WorkflowHandle[Any, BertExperimentOutput]:
    return await client.start_workflow(
        FINE_TUNING_WORKFLOW,
        experiment,
        id=workflow_id or experiment_workflow_id(experiment.experiment_name),
        task_queue=task_queue,
        result_type=BertExperimentOutput,
    )


async def watch_experiment(
    handle: WorkflowHandle[Any, BertExperimentOutput], console: Console, poll_seconds: float = 1.0
) -> BertExperimentOutput:
    """Progress bars from the ``progress`` query until the workflow closes."""
    result_task = asyncio.create_task(handle.result())
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[steps]}"),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bars:
        tasks: dict[str, Any] = {}
        while not result_task.done():
            try:
                progress = await handle.query(PROGRESS_QUERY, result_type=ExperimentProgress)
            except Exception:  # the workflow may not have started its first task yet
                progress = None
            for run in progress.runs if progress else []:
                status = run.phase if run.state == "running" else run.state
                if run.loss is not None:
                    status += f" loss={run.loss:.4f}"
                if run.attempt > 1:
                    status += f" attempt={run.attempt}"
                steps = f"{run.global_step}/{run.max_steps} steps" if run.max_steps else ""
                if run.run_id not in tasks:
                    tasks[run.run_id] = bars.add_task(
                        run.run_id, total=None, status=status, steps=steps
                    )
                bars.update(
                    tasks[run.run_id],
                    total=run.max_steps or None,
                    completed=run.global_step,
                    status=status,
                    steps=steps,
                )
            await asyncio.wait({result_task}, timeout=poll_seconds)
    return result_task.result()


def results_table(output: BertExperimentOutput) -> Table:
    """One row per run; run ids (often long: they embed the model name) go in the caption."""
    table = Table(
        title=f"Experiment {output.experiment_name}",
        caption="\n".join(f"#{i}: {run.run_id}" for i, run in enumerate(output.runs)),
        caption_justify="left",
    )
    for column in (
        "#",
        "train loss",
        "eval acc",
        "eval F1",
        "majority baseline",
        "samples/s",
        "time (s)",
        "resumed from step",
    ):
        table.add_column(column, justify="right")
    for index, run in enumerate(output.runs):
        table.add_row(
            str(index),
            f"{run.train_loss:.4f}",
            "-" if run.eval_accuracy is None else f"{run.eval_accuracy:.3f}",
            f"{run.eval_metrics['eval_f1_macro']:.3f}"
            if "eval_f1_macro" in run.eval_metrics
            else "-",
            "-"
            if run.majority_baseline_accuracy is None
            else f"{run.majority_baseline_accuracy:.3f}",
            f"{run.train_samples_per_second:.1f}",
            f"{run.training_time_seconds:.1f}" + (" (reused)" if run.reused else ""),
            "-" if run.resumed_from_step is None else str(run.resumed_from_step),
        )
    return table


def sweep_workflow_id(sweep_name: str) -> str:
    return f"bert-sweep-{sweep_name}"


async def start_sweep(
    client: Client, sweep: BertSweepInput, task_queue: str, workflow_id: str | None
) -> WorkflowHandle[Any, BertSweepOutput]:
    return await client.start_workflow(
        SWEEP_WORKFLOW,
        sweep,
        id=workflow_id or sweep_workflow_id(sweep.sweep_name),
        task_queue=task_queue,
        result_type=BertSweepOutput,
    )


async def watch_sweep(
    handle: WorkflowHandle[Any, BertSweepOutput], console: Console, poll_seconds: float = 1.0
) -> BertSweepOutput:
    """A live table of trials from the ``progress`` query until the sweep closes."""
    result_task = asyncio.create_task(handle.result())
    progress: SweepProgress | None = None
    with Live(Table(title="waiting for the sweep to start"), console=console) as live:
        while not result_task.done():
            try:
                latest = await handle.query(PROGRESS_QUERY, result_type=SweepProgress)
            except Exception:  # the workflow may not have started its first task yet
                latest = None
            if latest is not None:
                progress = latest
                live.update(sweep_table(progress))
            await asyncio.wait({result_task}, timeout=poll_seconds)
        # The last frame stays on screen: without the "best:" caption, which the caller
        # prints once with the sweep's result.
        with contextlib.suppress(Exception):
            progress = await handle.query(PROGRESS_QUERY, result_type=SweepProgress)
        if progress is not None:
            live.update(sweep_table(progress, caption=False))
    return result_task.result()


def _format_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def sweep_table(progress: SweepProgress | BertSweepOutput, caption: bool = True) -> Table:
    """One row per trial: state, params, epoch, metric; the best so far is marked (and named
    in the caption, while the sweep runs)."""
    metric = progress.metric
    done = sum(t.state in ("succeeded", "pruned", "failed") for t in progress.trials)
    total = progress.num_trials if isinstance(progress, SweepProgress) else len(progress.trials)
    table = Table(
        title=f"Sweep {progress.sweep_name}: {done}/{total} trials done",
        caption=f"best: {progress.best_run_id or '-'}" if caption else None,
        caption_justify="left",
    )
    for column in ("#", "state", "params", "epoch", metric, "best"):
        table.add_column(column, justify="left" if column in ("state", "params") else "right")
    for trial in progress.trials:
        value = trial.eval_metrics.get(metric)
        epoch = getattr(trial, "epoch", 0.0) or trial.epochs_completed
        state = trial.state
        if state == "running":
            state = getattr(trial, "phase", state)
        table.add_row(
            str(trial.trial_index),
            state if not trial.error else f"{state}: {trial.error[:60]}",
            " ".join(f"{k}={_format_param(v)}" for k, v in trial.params.items()),
            f"{epoch:.1f}" if epoch else "-",
            "-" if value is None else f"{value:.4f}",
            "*" if trial.run_id == progress.best_run_id else "",
        )
    return table


def chunk_bounds(
    texts: list[str],
    text_pairs: list[str] | None = None,
    max_bytes: int = PREDICT_CHUNK_BYTES,
    *,
    labels: list[str] | None = None,
    per_word: bool = False,
    first_texts: int | None = None,
) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive chunks whose result fits ``max_bytes`` (what a text
    returns: ``labels`` for multi-label, ``per_word`` for token classification); the first
    chunk holds at most ``first_texts`` texts."""
    bounds: list[tuple[int, int]] = []
    start, size = 0, 0
    for index, text in enumerate(texts):
        pair = [text_pairs[index]] if text_pairs is not None else None
        length = inference_payload_bytes([text], pair, labels=labels, per_word=per_word)
        full = size + length > max_bytes or (
            not bounds and first_texts is not None and index - start >= first_texts
        )
        if index > start and full:
            bounds.append((start, index))
            start, size = index, 0
        size += length
    if start < len(texts) or not bounds:
        bounds.append((start, len(texts)))
    return bounds


def chunk_texts(texts: list[str], max_bytes: int = PREDICT_CHUNK_BYTES) -> list[list[str]]:
    return [texts[a:b] for a, b in chunk_bounds(texts, max_bytes=max_bytes)]


# ``predict @production ...`` names an alias; anything else is a run id.
ALIAS_PREFIX = "@"


def model_reference(model: str) -> dict[str, str]:
    """``{"alias": ...}`` for ``@ALIAS``, else ``{"run_id": ...}`` (request fields)."""
    if model.startswith(ALIAS_PREFIX):
        return {"alias": model.removeprefix(ALIAS_PREFIX)}
    return {"run_id": model}


def inference_requests(
    model: str, texts: list[str], text_pairs: list[str] | None = None, **options: Any
) -> list[BertInferenceRequest]:
    """Validated requests for ``model`` (a run id or ``@ALIAS``), one per chunk of ``texts``
    (and their ``text_pairs``) that fits the payload budget whatever the run's task (a tag
    per word counted); ``run_inference`` sizes the chunks after the first for the task."""
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise UserError(
            f"{len(text_pairs)} second texts (--pair, --pair-file) for {len(texts)} texts: "
            "give one per text",
            INVALID_CONFIG,
        )
    bounds = chunk_bounds(texts, text_pairs, per_word=True, first_texts=FIRST_CHUNK_TEXTS)
    try:
        return [
            BertInferenceRequest(
                **model_reference(model),
                texts=texts[a:b],
                text_pairs=text_pairs[a:b] if text_pairs is not None else None,
                **options,
            )
            for a, b in bounds
        ]
    except ValidationError as err:
        raise UserError(describe_validation_error(err), INVALID_CONFIG) from None


async def predict(
    client: Client,
    model: str,
    texts: list[str],
    task_queue: str,
    text_pairs: list[str] | None = None,
    **options: Any,
) -> BertInferenceResult:
    """Predict ``texts`` with ``model`` (a run id or ``@ALIAS``); large inputs are split over
    several workflow executions."""
    return await run_inference(
        client, inference_requests(model, texts, text_pairs, **options), task_queue
    )


def _sized_for(
    first: BertInferenceResult, rest: list[BertInferenceRequest]
) -> list[BertInferenceRequest]:
    """The requests after the first, cut again for what the run's task returns per text."""
    if not rest:
        return []
    texts = [text for request in rest for text in request.texts]
    pairs = None
    if rest[0].text_pairs is not None:
        pairs = [pair for request in rest for pair in request.text_pairs or []]
    labels = None
    if first.task == MULTI_LABEL and first.predictions:
        labels = list(first.predictions[0].get("scores", {}))
    bounds = chunk_bounds(texts, pairs, labels=labels, per_word=first.task == TOKEN_CLASSIFICATION)
    template = rest[0]
    return [
        template.model_copy(
            update={
                "texts": texts[a:b],
                "text_pairs": pairs[a:b] if pairs is not None else None,
            }
        )
        for a, b in bounds
    ]


async def run_inference(
    client: Client, requests: list[BertInferenceRequest], task_queue: str
) -> BertInferenceResult:
    """Execute the requests one after another and join the answers in input order.

    An alias is resolved once, by the first request: the later chunks name the run it
    resolved to, so every text is predicted by the same model even if the alias is
    promoted meanwhile. The first answer says the run's task; the later chunks are cut for
    it (a multi-label run's probabilities per label, a tagger's tags per word).
    """

    async def execute(request: BertInferenceRequest) -> BertInferenceResult:
        return await client.execute_workflow(
            INFERENCE_WORKFLOW,
            request,
            id=f"bert-inference-{uuid.uuid4()}",
            task_queue=task_queue,
            result_type=BertInferenceResult,
        )

    first = await execute(requests[0])
    results = [first]
    for request in _sized_for(first, requests[1:]):
        if request.alias is not None:
            request = request.model_copy(update={"run_id": first.run_id, "alias": None})
        results.append(await execute(request))
    return BertInferenceResult(
        run_id=first.run_id,
        texts=[t for r in results for t in r.texts],
        labels=[label for r in results for label in r.labels],
        label_names=[name for r in results for name in r.label_names],
        confidences=[c for r in results for c in r.confidences],
        task=first.task,
        predictions=[p for r in results for p in r.predictions],
    )


def promote_input(run_id: str | None, alias: str, **rollout: Any) -> BertPromoteInput:
    """A validated promotion; ``rollout``: ``gate``, ``canary_percent``, ``shadow``,
    ``rollback`` (``BertPromoteInput``)."""
    try:
        return BertPromoteInput(run_id=run_id, alias=alias, **rollout)
    except ValidationError as err:
        raise UserError(describe_validation_error(err), INVALID_CONFIG) from None


async def promote(
    client: Client, run_id: str | None, alias: str, task_queue: str, **rollout: Any
) -> BertPromoteOutput:
    """Point ``alias`` at the complete run ``run_id`` through ``BertPromoteWorkflow``, or
    roll out ``run_id`` as ``rollout`` says (``promote_input``)."""
    request = promote_input(run_id, alias, **rollout)
    return await client.execute_workflow(
        PROMOTE_WORKFLOW,
        request,
        id=f"bert-promote-{alias}-{uuid.uuid4().hex[:12]}",
        task_queue=task_queue,
        result_type=BertPromoteOutput,
    )


def promotion_summary(result: BertPromoteOutput, rolled_back: bool = False) -> list[str]:
    """What ``bert-finetune promote`` prints: the gate's scores, then the alias's state."""
    lines = []
    gate = result.gate
    if gate is not None and gate.skipped is not None:
        lines.append(f"Gate not run: {gate.skipped}.")
    elif gate is not None and gate.candidate_score is not None:
        lines.append(
            f"Gate passed: {gate.metric} {gate.candidate_score:.4f} vs {gate.current_score:.4f} "
            f"for {gate.current_run_id} on {gate.rows} rows (min_delta {gate.min_delta:g})."
        )
    alias, run_id = result.alias, result.run_id
    if result.canary_run_id is not None:
        lines.append(
            f"Alias {alias} keeps run {run_id}; canary run {result.canary_run_id} answers "
            f"{result.canary_percent}% of its requests. Complete the rollout with "
            f"`bert-finetune promote {result.canary_run_id} {alias}`, undo it with "
            f"`bert-finetune promote {alias} --rollback`."
        )
    elif result.shadow_run_id is not None:
        lines.append(
            f"Alias {alias} keeps run {run_id}; shadow run {result.shadow_run_id} scores every "
            "request unanswered (agreement: bert_inference_shadow_agreed_total / "
            "bert_inference_shadow_compared_total). Complete the rollout with "
            f"`bert-finetune promote {result.shadow_run_id} {alias}`, undo it with "
            f"`bert-finetune promote {alias} --rollback`."
        )
    elif rolled_back:
        lines.append(f"Alias {alias} serves run {run_id} alone again (rollout rolled back).")
    else:
        was = f"it pointed at {result.previous_run_id}" if result.previous_run_id else "a new alias"
        lines.append(
            f"Alias {alias} now serves run {run_id} ({was}); predict with "
            f"`bert-finetune predict @{alias} TEXT...`"
        )
    return lines


def export_input(run_id: str) -> BertExportInput:
    try:
        return BertExportInput(run_id=run_id)
    except ValidationError as err:
        raise UserError(describe_validation_error(err), INVALID_CONFIG) from None


async def start_export(
    client: Client, run_id: str, task_queue: str
) -> WorkflowHandle[Any, BertExportOutput]:
    """Start ``BertExportWorkflow`` for the saved run ``run_id`` (``bert-export/{run_id}``),
    or attach to the one already running for it (started by its run, sweep or promotion,
    or by another ``bert-finetune export``). The export runs on a trainer: the workflow
    waits on the training queue until one polls it."""
    request = export_input(run_id)
    workflow_id = export_workflow_id(run_id)
    try:
        return await client.start_workflow(
            EXPORT_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=task_queue,
            result_type=BertExportOutput,
        )
    except WorkflowAlreadyStartedError:
        # No run id: the handle follows whichever execution of the id is the latest.
        return client.get_workflow_handle(workflow_id, result_type=BertExportOutput)


async def export_run(client: Client, run_id: str, task_queue: str) -> BertExportOutput:
    """Export ``run_id`` (or wait for the export already running) and return the outcome."""
    handle = await start_export(client, run_id, task_queue)
    return await handle.result()


# The graph ``export.json`` serves, as ``runs`` and ``export`` name it.
GRAPH_PRECISION = {INT8_GRAPH: "int8", FP32_GRAPH: "fp32"}


def graph_precision(served_graph: str | None) -> str:
    if served_graph is None:
        return "none"
    return GRAPH_PRECISION.get(served_graph, served_graph)


def export_summary(output: BertExportOutput) -> str:
    """One line for a published export; ``UserError`` when nothing was published."""
    run = output.run_id
    if output.exported_run_id != output.run_id:
        run += f" (it reuses the model of run {output.exported_run_id}: exported there)"
    again = f"`bert-finetune export {output.run_id}`"
    if output.outcome == "superseded":
        raise UserError(
            f"run {run} was overwritten or removed while its export was being built; nothing "
            f"was published: check it with `bert-finetune runs` and run {again} again"
        )
    if output.outcome == "abandoned":
        raise UserError(
            f"the export of run {run} was cancelled; nothing was published: run {again} again"
        )
    graph = f"{graph_precision(output.served_graph)} graph (onnx/{output.served_graph})"
    if output.outcome == "already_exported":
        return (
            f"Run {run} already has an export of its current commit: ONNX Runtime serves "
            f"the {graph}"
        )
    return (
        f"Exported run {run} in {output.export_seconds:.1f} s: ONNX Runtime now serves the {graph}"
    )


def _score(value: float) -> str:
    return f"{value:.3f}"


def _multi_labels(prediction: dict[str, Any]) -> str:
    """The labels predicted with their probabilities; "none" and the most probable label
    when no label reaches 0.5."""
    scores: dict[str, float] = prediction.get("scores", {})
    chosen = prediction.get("labels", [])
    if chosen:
        return ", ".join(f"{name} {_score(scores[name])}" for name in chosen)
    if not scores:
        return "none"
    best = max(scores, key=lambda name: scores[name])
    return f"none (most probable: {best} {_score(scores[best])})"


def _entities(prediction: dict[str, Any]) -> str:
    """One entity per line: its label, its text, where it is, its score."""
    found = prediction.get("entities", [])
    if not found:
        return "-"
    return "\n".join(
        f"{entity['label']} {entity['text']!r} [{entity['start']}:{entity['end']}] "
        f"{_score(entity['score'])}"
        for entity in found
    )


def predictions_table(
    result: BertInferenceResult, alias: str | None = None, text_pairs: list[str] | None = None
) -> Table:
    """One row per text, with what the run's task predicts: the label and its confidence,
    the labels of a multi-label run with their probabilities, a regression's score, the
    entities found by a tagger (with offsets into the text); the second text of each pair
    next to the first."""
    caption = f"run {result.run_id}" + (f" (alias {alias})" if alias else "")
    if result.task != SINGLE_LABEL:
        caption += f"; {result.task}"
    table = Table(title="Predictions", caption=caption, caption_justify="left")
    table.add_column("text", overflow="fold", max_width=70 if text_pairs is None else 40)
    if text_pairs is not None:
        table.add_column("text pair", overflow="fold", max_width=40)
    pairs: list[str | None] = (
        list(text_pairs) if text_pairs is not None else [None] * len(result.texts)
    )
    if result.task == SINGLE_LABEL and not result.predictions:  # an older worker's answer
        table.add_column("label")
        table.add_column("confidence", justify="right")
        for text, pair, name, confidence in zip(
            result.texts, pairs, result.label_names, result.confidences, strict=True
        ):
            table.add_row(
                text, *([pair] if text_pairs is not None else []), name, _score(confidence)
            )
        return table
    columns: dict[str, tuple[str, ...]] = {
        SINGLE_LABEL: ("label", "confidence"),
        MULTI_LABEL: ("labels",),
        REGRESSION: ("score",),
        TOKEN_CLASSIFICATION: ("entities",),
    }
    for column in columns.get(result.task, ("prediction",)):
        table.add_column(
            column,
            justify="right" if column in ("confidence", "score") else "left",
            overflow="fold",
        )
    for text, pair, prediction in zip(result.texts, pairs, result.predictions, strict=True):
        if result.task == SINGLE_LABEL:
            cells = [prediction["label"], _score(prediction["score"])]
        elif result.task == MULTI_LABEL:
            cells = [_multi_labels(prediction)]
        elif result.task == REGRESSION:
            cells = [f"{prediction['score']:.4f}"]
        elif result.task == TOKEN_CLASSIFICATION:
            cells = [_entities(prediction)]
        else:
            cells = [json.dumps(prediction)]
        table.add_row(text, *([pair or ""] if text_pairs is not None else []), *cells)
    return table


def failure_message(err: WorkflowFailureError) -> str:
    """``[Type] message`` of the innermost application error."""
    cause: BaseException | None = err.cause
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return one_line(f"[{cause.type or 'ApplicationError'}] {cause.message}")
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return one_line(str(err.cause or err))
