"""The fixed interface (docs/architecture.md): workflow and activity types, queues, run ids.

This module is imported by workflows, so it stays free of I/O and heavy imports.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from shared.tasks import (
    MAIN_METRIC,
    MULTI_LABEL,
    SINGLE_LABEL,
    TASK_METRICS,
    TASKS,
    TOKEN_CLASSIFICATION,
    Task,
    check_metric,
)

TRAINING_TASK_QUEUE = "bert-finetune-task-queue"
INFERENCE_TASK_QUEUE = "bert-inference-task-queue"

FINE_TUNING_WORKFLOW = "BertFineTuningWorkflow"
INFERENCE_WORKFLOW = "BertInferenceWorkflow"
FINE_TUNE_ACTIVITY = "fine_tune_bert"
# A local activity of the training worker: removes a cancelled run's partial output.
DISCARD_RUN_ACTIVITY = "discard_partial_run"
# A local activity of the trainer queue's workers: a run's newest sealed checkpoint
# (``CheckpointProgress``), which says whether failed attempts made progress.
CHECKPOINT_PROGRESS_ACTIVITY = "newest_sealed_checkpoint"
INFERENCE_ACTIVITY = "run_bert_inference"
# ``run_bert_inference`` for a model already loaded on this worker; fails ``ModelCold`` at
# once otherwise (``BertInferenceWorkflow`` runs it as a local activity, docs/inference.md).
INFERENCE_WARM_ACTIVITY = "run_bert_inference_warm"
PROMOTE_WORKFLOW = "BertPromoteWorkflow"
# A local activity of the trainer task queue's workers (trainers and controllers): moves an
# alias pointer. Any workflow on that queue may run it (``BertPromoteWorkflow``, a sweep).
PROMOTE_ACTIVITY = "promote_alias"

# Temporal refuses payloads over 2 MiB. An inference result echoes the texts and adds, per
# text, a label id, a label name and a confidence: budget half the limit, with an allowance
# per text, so many short texts are refused as surely as a few huge ones.
MAX_INFERENCE_PAYLOAD_BYTES = 1024 * 1024
RESULT_BYTES_PER_TEXT = 96
# Multi-label: each label's probability in ``scores`` (and its name in ``labels``), per text.
RESULT_BYTES_PER_LABEL = 40
# Token classification: each word's tag, and its share of an entity (offsets, score, and
# the word's text again, counted on top).
RESULT_BYTES_PER_WORD = 64


def _json_bytes(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def inference_payload_bytes(
    texts: list[str],
    text_pairs: list[str] | None = None,
    *,
    labels: list[str] | None = None,
    per_word: bool = False,
) -> int:
    """Estimated size of a ``BertInferenceResult`` for ``texts`` (JSON-encoded texts + extras),
    and of the request's second texts. What only the served run knows is counted when given:
    ``labels`` (a multi-label run's names, in every text's scores) and ``per_word`` (a token
    classification run: a tag per word, the words again in the entities)."""
    size = sum(_json_bytes(text) + RESULT_BYTES_PER_TEXT for text in texts)
    if text_pairs is not None:
        size += sum(_json_bytes(pair) for pair in text_pairs)
    if labels:
        size += len(texts) * sum(_json_bytes(name) + RESULT_BYTES_PER_LABEL for name in labels)
    if per_word:
        size += sum(_json_bytes(text) + RESULT_BYTES_PER_WORD * len(text.split()) for text in texts)
    return size


PROGRESS_QUERY = "progress"
PROGRESS_SIGNAL = "report_progress"

EXPERIMENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
# Aliases name files under ``$BERT_RUNS_DIR/_aliases``; they follow the experiment-name rule.
ALIAS_PATTERN = EXPERIMENT_NAME_PATTERN
_UNSAFE_MODEL_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_EXPERIMENT_NAME = re.compile(EXPERIMENT_NAME_PATTERN)
# A run id is one path component of at most 255 bytes (the common filesystem limit).
MAX_RUN_ID_LENGTH = 255
# Seeds are unsigned 32-bit integers (numpy's and torch's seeding take no more).
MAX_SEED = 2**32 - 1


def sanitize_model_name(model_name: str) -> str:
    """Replace every character outside ``[A-Za-z0-9._-]`` with ``_``."""
    return _UNSAFE_MODEL_CHARS.sub("_", model_name)


def make_run_id(experiment_name: str, index: int, model_name: str) -> str:
    """``{experiment_name}-run-{index}-{model_name_sanitized}`` (docs/architecture.md)."""
    return f"{experiment_name}-run-{index}-{sanitize_model_name(model_name)}"


def is_valid_alias(alias: str) -> bool:
    return _EXPERIMENT_NAME.fullmatch(alias) is not None


def is_safe_run_id(run_id: str) -> bool:
    """True when ``run_id`` is one path component that cannot escape a root nor name a
    reserved folder: it starts with a letter or digit (``_aliases`` and other ``_`` names
    belong to the runs root itself, ``.`` names are hidden or partial)."""
    return (
        0 < len(run_id.encode()) <= MAX_RUN_ID_LENGTH
        and run_id[0].isascii()
        and run_id[0].isalnum()
        and _UNSAFE_MODEL_CHARS.search(run_id) is None
    )


class _Strict(BaseModel):
    # Unknown fields are rejected; a typo in a hyperparameter name must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=False)


class BertFineTuneConfig(_Strict):
    """One fine-tuning run. Hyperparameters live here, not in worker configuration."""

    model_name: Annotated[str, Field(min_length=1, max_length=1024)] = "bert-base-uncased"
    dataset_name: str | None = "glue"
    dataset_config_name: str | None = "sst2"
    train_file: str | None = None
    validation_file: str | None = None
    text_column: Annotated[str, Field(min_length=1)] = "sentence"
    label_column: Annotated[str, Field(min_length=1)] = "label"
    num_epochs: Annotated[int, Field(ge=1, le=20)] = 3
    batch_size: Annotated[int, Field(ge=1, le=256)] = 16
    learning_rate: Annotated[float, Field(gt=0, le=0.1)] = 5e-5
    max_seq_length: Annotated[int, Field(ge=8, le=512)] = 128
    max_train_samples: Annotated[int, Field(ge=1)] | None = None
    max_eval_samples: Annotated[int, Field(ge=1)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 42
    use_gpu: bool = True
    checkpoint_steps: Annotated[int, Field(ge=1)] | None = None
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    warmup_ratio: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    # Batches of texts of similar length (the trainer's ``training/sampling.py``): less padding
    # per batch, so faster on texts of mixed length. Part of the reuse identity; runs trained
    # before the field existed count as false.
    group_by_length: bool = True
    # What the model learns (docs/tasks.md): one label per text (the default), a set of labels,
    # a number, or one IOB2 tag per word.
    task: Task = SINGLE_LABEL
    # The second text of a pair (NLI, paraphrase, similarity); sequence tasks only.
    text_pair_column: Annotated[str, Field(min_length=1)] | None = None
    # Multi-label only: splits a string label cell ("sports|politics").
    label_separator: Annotated[str, Field(min_length=1, max_length=10)] | None = None
    # Stop when ``metric_for_best_model`` has not improved for this many evaluations (epochs).
    early_stopping_patience: Annotated[int, Field(ge=1, le=20)] | None = None
    # None: the task's main metric (inside a sweep: the sweep's metric).
    metric_for_best_model: str | None = None
    # Commit the best epoch's model (by ``metric_for_best_model``), not the last one.
    keep_best_epoch: bool = False

    @field_validator("model_name", "text_column", "label_column", "text_pair_column")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value is not None and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain control characters")
        return value

    @model_validator(mode="after")
    def _has_training_data(self) -> BertFineTuneConfig:
        if not self.train_file and not self.dataset_name:
            raise ValueError(
                "no training data: set train_file (a local csv/json/jsonl/parquet file) "
                "or dataset_name (a Hugging Face dataset id)"
            )
        if self.validation_file and not self.train_file:
            raise ValueError("validation_file is set without train_file: set both or neither")
        if self.label_column == self.text_column:
            raise ValueError(
                f"label_column {self.label_column[:100]!r} is also the text_column: the labels "
                "must be another column than the texts (every text would be a class of its own)"
            )
        if self.text_pair_column is not None:
            if self.task == TOKEN_CLASSIFICATION:
                raise ValueError(
                    "text_pair_column: token_classification tags the words of one text; "
                    "remove text_pair_column or choose a sequence task"
                )
            if self.text_pair_column in (self.text_column, self.label_column):
                raise ValueError(
                    f"text_pair_column {self.text_pair_column[:100]!r} is also the text or "
                    "label column: name the column holding each pair's second text"
                )
        if self.label_separator is not None and self.task != MULTI_LABEL:
            raise ValueError(
                "label_separator: only multi_label_classification splits label cells; remove "
                "it or set task to multi_label_classification"
            )
        if self.metric_for_best_model is not None:
            check_metric(self.task, self.metric_for_best_model, "metric_for_best_model")
        return self

    def best_model_metric(self) -> str:
        """The metric that picks the best epoch and drives early stopping."""
        return self.metric_for_best_model or MAIN_METRIC[self.task]


class BertExperimentInput(_Strict):
    """Input of ``BertFineTuningWorkflow``."""

    experiment_name: Annotated[str, Field(pattern=EXPERIMENT_NAME_PATTERN)]
    # One workflow history holds every run's progress; split bigger sweeps (docs/durability.md).
    runs: Annotated[list[BertFineTuneConfig], Field(min_length=1, max_length=100)]
    heartbeat_timeout_seconds: Annotated[int, Field(ge=5, le=600)] = 60
    overwrite: bool = Field(
        default=False,
        description=(
            "Replace finished runs with the same run_id. Without it a finished run with the "
            "same config and data is reused, and one with a different config is refused."
        ),
    )

    @model_validator(mode="after")
    def _run_ids_are_safe(self) -> BertExperimentInput:
        for index, config in enumerate(self.runs):
            run_id = make_run_id(self.experiment_name, index, config.model_name)
            if not is_safe_run_id(run_id):
                raise ValueError(
                    f"runs[{index}].model_name: the run id {run_id[:80]!r}... is longer than "
                    f"{MAX_RUN_ID_LENGTH} bytes; shorten experiment_name or model_name"
                )
        return self

    def run_ids(self) -> list[str]:
        return [make_run_id(self.experiment_name, i, c.model_name) for i, c in enumerate(self.runs)]


class RunContext(_Strict):
    """What a run belongs to: its experiment or sweep (run metadata, experiment tracking)."""

    kind: Literal["experiment", "sweep"]
    name: str
    trial_index: int | None = None
    # The searched fields of a sweep trial with the values used.
    params: dict[str, Any] = Field(default_factory=dict)


class BertFineTuneRequest(_Strict):
    """Input of the ``fine_tune_bert`` activity."""

    run_id: str
    config: BertFineTuneConfig
    overwrite: bool = False
    # Attempts used by earlier executions of this run's activity (re-executed after
    # preemptions), so attempt numbers, and checkpoint folders, keep increasing.
    attempt_offset: Annotated[int, Field(ge=0)] = 0
    # Successive halving. ``pause_at_epoch``: train to the end of that epoch, evaluate, seal
    # a checkpoint and return ``paused=True`` without committing (the run stays partial and
    # the next execution resumes it). ``finish_at_epoch``: commit the run as trained to the
    # end of that epoch (a pruned trial keeps its model there; ``stopped_early=True``).
    pause_at_epoch: Annotated[int, Field(ge=1)] | None = None
    finish_at_epoch: Annotated[int, Field(ge=1)] | None = None
    # The workflow that receives this run's progress signals (the experiment or sweep);
    # None: the workflow that runs the activity.
    progress_workflow_id: str | None = None
    context: RunContext | None = None
    # True: the commit includes the ONNX export (what workflows started before the export
    # workflow existed expect). The run workflow sets False and exports after the commit
    # (``BertExportWorkflow``), so the export is not on the training's critical path.
    export_at_commit: bool = True

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str) -> str:
        if not is_safe_run_id(value):
            raise ValueError(
                "must be one path component of [A-Za-z0-9._-] starting with a letter or digit"
            )
        return value


class BertFineTuneResult(_Strict):
    run_id: str
    config: BertFineTuneConfig
    train_loss: float
    eval_accuracy: float | None
    training_time_seconds: float
    num_parameters: int
    model_dir: str
    num_train_samples: int
    train_samples_per_second: float
    label_names: list[str]
    resumed_from_step: int | None = None
    num_eval_samples: int = 0
    majority_baseline_accuracy: float | None = None
    reused: bool = False
    notes: list[str] = Field(default_factory=list)
    # eval_accuracy, eval_f1_macro, eval_precision_macro, eval_recall_macro, eval_loss; empty
    # when the run has no evaluation data.
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    # Another run whose finished model this run reuses instead of training (never copied).
    reused_from: str | None = None
    epochs_completed: int = 0
    # Stopped before num_epochs by successive halving (a pruned sweep trial).
    stopped_early: bool = False
    # Returned for ``pause_at_epoch``: evaluated and checkpointed, not committed.
    paused: bool = False
    task: Task = SINGLE_LABEL
    # The trivial predictor's metrics on the evaluation data (majority class, most frequent
    # label set, the training mean, all ``O``), same keys as ``eval_metrics`` where defined.
    baseline_metrics: dict[str, float] = Field(default_factory=dict)
    # The epoch whose model was committed when ``keep_best_epoch`` (else None).
    best_epoch: int | None = None


class BertExperimentOutput(_Strict):
    experiment_name: str
    runs: list[BertFineTuneResult]


class BertInferenceRequest(_Strict):
    """Exactly one of ``run_id`` and ``alias`` names the model to serve."""

    run_id: Annotated[str, Field(min_length=1)] | None = None
    alias: Annotated[str, Field(pattern=EXPERIMENT_NAME_PATTERN)] | None = None
    texts: Annotated[list[str], Field(min_length=1)]
    max_seq_length: Annotated[int, Field(ge=8, le=512)] = 128
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 32
    use_gpu: bool = False
    # The second text of each pair, same length as ``texts``: required exactly when the run
    # was trained with a ``text_pair_column``.
    text_pairs: list[str] | None = None
    # A request by alias whose alias has a canary: the canary answers when this draw is below
    # its share (``canary_percent`` / 100). None: one draw per workflow execution (from its
    # random run id); give it to pin which run answers.
    route_draw: Annotated[float, Field(ge=0, lt=1)] | None = None

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str | None) -> str | None:
        if value is not None and not is_safe_run_id(value):
            raise ValueError(
                "must be the id of a saved run (one path component of [A-Za-z0-9._-] "
                "starting with a letter or digit); list saved runs with `bert-finetune runs`"
            )
        return value

    @model_validator(mode="after")
    def _one_model(self) -> BertInferenceRequest:
        if (self.run_id is None) == (self.alias is None):
            raise ValueError(
                "give exactly one of run_id (a saved run) and alias (a promoted name); "
                "list them with `bert-finetune runs`"
            )
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError(
                f"text_pairs: {len(self.text_pairs)} second texts for {len(self.texts)} texts; "
                "give one per text (or none for a run trained on single texts)"
            )
        return self


def _saved_run_id(value: str) -> str:
    if not is_safe_run_id(value):
        raise ValueError(
            "must be the id of a saved run (one path component of [A-Za-z0-9._-] "
            "starting with a letter or digit); list saved runs with `bert-finetune runs`"
        )
    return value


# The id of a run that already exists (what promotions and exports name).
SavedRunId = Annotated[str, AfterValidator(_saved_run_id)]


# Metrics a promotion gate may compare: every task's evaluation metric but the loss, which
# needs the models' raw outputs (the gate scores what the runs serve: labels, sets, numbers,
# tags).
GATE_METRICS = tuple(
    dict.fromkeys(name for task in TASKS for name in TASK_METRICS[task] if name != "eval_loss")
)


class PromotionGate(_Strict):
    """A promotion's quality gate (docs/inference.md, "Rollouts"): the candidate and the
    alias's current run are scored on ``data_file`` by ``metric``; the alias moves only when
    the candidate is at least ``min_delta`` better."""

    metric: str
    # A labelled file in the candidate's columns (csv, json, jsonl, parquet), inside the
    # evaluating inferencer's BERT_LOCAL_PATH_ROOTS.
    data_file: Annotated[str, Field(min_length=1, max_length=4096)]
    min_delta: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in GATE_METRICS:
            raise ValueError(
                f"{value[:60]!r} is not a metric a gate can compare; choose one of the run's "
                f"task metrics ({', '.join(GATE_METRICS)}; eval_loss is not one: the gate "
                "scores what the runs serve)"
            )
        return value

    @field_validator("data_file")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain control characters")
        return value


class BertPromoteInput(_Strict):
    """Input of ``BertPromoteWorkflow`` (and its ``promote_alias`` local activity).

    Without the rollout fields: point ``alias`` at ``run_id``. ``gate``: only if ``run_id``
    beats the alias's current run on the gate's data. ``canary_percent``: the alias keeps its
    run and sends that share of requests to ``run_id``; ``shadow``: ``run_id`` also scores
    every request, unanswered. ``rollback``: remove the alias's canary or shadow (``run_id``
    is then optional). Promoting the canary or shadow run again without ``canary_percent``
    and ``shadow`` completes its rollout.
    """

    run_id: SavedRunId | None = None
    alias: str
    gate: PromotionGate | None = None
    canary_percent: Annotated[int, Field(ge=1, le=99)] | None = None
    shadow: bool = False
    rollback: bool = False

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, value: str) -> str:
        if not is_valid_alias(value):
            raise ValueError(
                "must be 1-100 characters of [A-Za-z0-9._-] starting with a letter or digit "
                "(for example `production`)"
            )
        return value

    @model_validator(mode="after")
    def _one_kind_of_promotion(self) -> BertPromoteInput:
        if self.rollback:
            given = [
                name
                for name, value in (
                    ("gate", self.gate),
                    ("canary_percent", self.canary_percent),
                    ("shadow", self.shadow or None),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"rollback removes the alias's canary or shadow; it takes no "
                    f"{', '.join(given)}: remove {'them' if len(given) > 1 else 'it'}, or "
                    "drop rollback to start a new rollout"
                )
        elif self.run_id is None:
            raise ValueError(
                "run_id: required field is missing (only a rollback, "
                '{"alias": ..., "rollback": true}, names no run)'
            )
        if self.canary_percent is not None and self.shadow:
            raise ValueError(
                "canary_percent and shadow: a canary (answers a share of requests) and a shadow "
                "(answers none) are exclusive; give one of them"
            )
        return self

    def is_rollout(self) -> bool:
        """Whether any rollout field is set (a plain promotion moves the pointer alone)."""
        return (
            self.gate is not None or self.canary_percent is not None or self.shadow or self.rollback
        )


class PromotionGateResult(_Strict):
    """What a promotion's gate measured (``BertPromoteOutput.gate``)."""

    metric: str
    # None: nothing was compared (a new alias always passes; ``skipped`` says why).
    candidate_score: float | None = None
    current_score: float | None = None
    current_run_id: str | None = None
    rows: int = 0
    min_delta: float = 0.0
    skipped: str | None = None


class BertPromoteOutput(_Strict):
    alias: str
    # The run the alias serves (all traffic but the canary's share).
    run_id: str
    # The run the alias pointed at before; None for a new alias.
    previous_run_id: str | None = None
    # Whether the promoted run has a current ONNX export (None: not reported). Without one,
    # the promotion starts the run's export so the alias is soon served by ONNX Runtime.
    exported: bool | None = None
    # The alias's rollout after the promotion: the run answering ``canary_percent`` percent
    # of its requests, or the run scoring every request in the shadow (never both).
    canary_run_id: str | None = None
    canary_percent: int | None = None
    shadow_run_id: str | None = None
    # The gate's scores, for a promotion with a gate.
    gate: PromotionGateResult | None = None


class BertInferenceResult(_Strict):
    run_id: str
    texts: list[str]
    # Single-label runs; empty lists for the other tasks (read ``predictions``).
    labels: list[int]
    label_names: list[str]
    confidences: list[float]
    task: Task = SINGLE_LABEL
    # One entry per text (docs/tasks.md): single-label ``{label, label_id, score}``;
    # multi-label ``{labels, scores}``; regression ``{score}``; token classification
    # ``{tags, entities: [{label, start, end, text, score}]}``.
    predictions: list[dict[str, Any]] = Field(default_factory=list)


# "pruned": a sweep trial stopped early by successive halving.
RunState = Literal["pending", "running", "succeeded", "pruned", "failed", "cancelled"]


class _RunProgressFields(_Strict):
    run_id: str
    phase: str
    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_accuracy: float | None = None
    latest_checkpoint: str | None = None
    attempt: int
    resumed_from_step: int | None = None
    eta_seconds: float | None = None


class TrainingProgress(_RunProgressFields):
    """What the training activity reports: heartbeat details and the workflow's progress signal."""

    phase: str = "starting"
    attempt: int = 1
    steps_per_second: float | None = None


class RunProgress(_RunProgressFields):
    """One entry of the ``progress`` query."""

    state: RunState = "pending"
    phase: str = "pending"
    attempt: int = 0
    error: str | None = None

    def update_from(self, progress: TrainingProgress) -> None:
        """Take every field the training activity reports."""
        for name in _RunProgressFields.model_fields:
            setattr(self, name, getattr(progress, name))


class ExperimentProgress(_Strict):
    experiment_name: str
    runs: list[RunProgress]


class CheckpointProgress(_Strict):
    """A run's newest sealed checkpoint: the attempt that sealed it and its step (attempt 0
    and step -1: none)."""

    attempt: int = 0
    step: int = -1
