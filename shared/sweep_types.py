"""Sweep interface: ``BertSweepWorkflow``'s input, output and progress, and the messages of
the per-run child workflow (``BertRunWorkflow``).

Imported by workflows: free of I/O and heavy imports, like ``shared.types``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator

from shared.tasks import MINIMIZED_METRICS, SWEEP_DEFAULT_METRIC, check_metric
from shared.types import (
    EXPERIMENT_NAME_PATTERN,
    MAX_RUN_ID_LENGTH,
    MAX_SEED,
    BertFineTuneConfig,
    BertFineTuneRequest,
    _Strict,
    is_safe_run_id,
    make_run_id,
)

SWEEP_WORKFLOW = "BertSweepWorkflow"
# Internal: the lifecycle of one run (re-execution after preemption, discard on cancel),
# a child of both the experiment and the sweep workflow.
RUN_WORKFLOW = "BertRunWorkflow"
# Local activities of the orchestration (no GPU, no training): trial proposals and the
# fast check that a sweep's run ids do not hold other configs' runs.
PROPOSE_TRIALS_ACTIVITY = "propose_sweep_trials"
CHECK_SWEEP_RUNS_ACTIVITY = "check_sweep_runs"
# Ends the sweep's parent run in the experiment tracker (a no-op without one).
CLOSE_SWEEP_TRACKING_ACTIVITY = "close_sweep_tracking"
# Successive halving: the run tells its parent it reached a rung, the parent answers.
RUNG_REACHED_SIGNAL = "rung_reached"
RUNG_DECISION_SIGNAL = "rung_decision"

MAX_TRIALS = 100
# The config fields a sweep may search (each value is validated by the field's own rules).
TunableField = Literal[
    "learning_rate",
    "batch_size",
    "num_epochs",
    "max_seq_length",
    "weight_decay",
    "warmup_ratio",
    "seed",
    "model_name",
]
TUNABLE_FIELDS: tuple[str, ...] = get_args(TunableField)
INTEGER_FIELDS = frozenset({"batch_size", "num_epochs", "max_seq_length", "seed"})
# Any ``eval_metrics`` key of the sweep's task (``shared.tasks.TASK_METRICS``), checked by
# ``BertSweepInput``; lower is better for losses and errors (``shared.tasks.is_minimized``).
SweepMetric = str
MINIMISED_METRICS = MINIMIZED_METRICS
Strategy = Literal["grid", "random", "tpe"]
TrialState = Literal["succeeded", "pruned", "failed"]
LiveTrialState = Literal["pending", "running", "succeeded", "pruned", "failed", "cancelled"]
ParamValue = int | float | str


class ParamSpec(_Strict):
    """``{"values": [...]}`` (categorical, a grid axis), ``{"min", "max"}`` (uniform) or
    ``{"min", "max", "log": true}`` (log-uniform)."""

    values: Annotated[list[ParamValue], Field(min_length=1, max_length=MAX_TRIALS)] | None = None
    min: int | float | None = None
    max: int | float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        ranged = self.min is not None or self.max is not None
        if (self.values is None) == (not ranged):
            raise ValueError(
                'give either "values": [...] or "min" and "max" (with optional "log": true)'
            )
        if self.values is not None and self.log:
            raise ValueError('"log" applies to a min/max range, not to "values"')
        if ranged:
            if self.min is None or self.max is None:
                raise ValueError('a range needs both "min" and "max"')
            if self.min > self.max:
                raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
            if self.log and self.min <= 0:
                raise ValueError(f'"log": true needs min > 0 (got {self.min})')
        return self

    @property
    def is_range(self) -> bool:
        return self.values is None


class SuccessiveHalving(_Strict):
    type: Literal["successive_halving"]
    reduction_factor: Annotated[int, Field(ge=2, le=4)] = 2
    min_epochs: Annotated[int, Field(ge=1, le=20)] = 1


class BertSweepInput(_Strict):
    """Input of ``BertSweepWorkflow``."""

    sweep_name: Annotated[str, Field(pattern=EXPERIMENT_NAME_PATTERN)]
    base: BertFineTuneConfig
    space: Annotated[dict[TunableField, ParamSpec], Field(min_length=1)]
    strategy: Strategy = "random"
    num_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 8
    max_concurrent_trials: Annotated[int, Field(ge=1)] = 4
    # Default: the task's (``shared.tasks.SWEEP_DEFAULT_METRIC``: eval_accuracy for
    # single-label, as before the tasks).
    metric: SweepMetric = "eval_accuracy"
    early_stopping: SuccessiveHalving | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    promote_alias: Annotated[str, Field(pattern=EXPERIMENT_NAME_PATTERN)] | None = None
    overwrite: bool = False
    heartbeat_timeout_seconds: Annotated[int, Field(ge=5, le=600)] = 60

    @field_validator("space", mode="before")
    @classmethod
    def _tunable_fields_only(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name in value:
                if name not in TUNABLE_FIELDS:
                    raise ValueError(
                        f"{str(name)[:100]!r} is not a tunable field; a sweep searches "
                        f"{', '.join(TUNABLE_FIELDS)} (set other fields in base)"
                    )
        return value

    @model_validator(mode="after")
    def _metric_of_the_task(self) -> BertSweepInput:
        if "metric" not in self.model_fields_set:
            self.metric = SWEEP_DEFAULT_METRIC[self.base.task]
        check_metric(self.base.task, self.metric, "metric")
        return self

    @model_validator(mode="after")
    def _space_fits_the_config(self) -> BertSweepInput:
        if "model_name" not in self.space:
            # Checked like an experiment's run ids: the longest trial index counts.
            run_id = make_run_id(self.sweep_name, MAX_TRIALS - 1, self.base.model_name)
            if not is_safe_run_id(run_id):
                raise ValueError(
                    f"base.model_name: the run id {run_id[:80]!r}... is longer than "
                    f"{MAX_RUN_ID_LENGTH} bytes; shorten sweep_name or model_name"
                )
        for name, spec in self.space.items():
            _check_spec(self.base, name, spec)
        if self.strategy == "grid":
            ranged = [name for name, spec in self.space.items() if spec.is_range]
            if ranged:
                raise ValueError(
                    f'space.{ranged[0]}: strategy grid takes only {{"values": [...]}} specs; '
                    'list the values or use strategy "random" or "tpe"'
                )
            size = math.prod(len(spec.values or ()) for spec in self.space.values())
            if size > MAX_TRIALS:
                raise ValueError(
                    f"space: the grid has {size} combinations, more than {MAX_TRIALS}; "
                    "remove values or split the sweep"
                )
        return self

    def total_trials(self) -> int:
        """The grid's size, or ``num_trials`` for the other strategies."""
        if self.strategy == "grid":
            return math.prod(len(spec.values or ()) for spec in self.space.values())
        return self.num_trials

    def trial_config(self, params: dict[str, Any]) -> BertFineTuneConfig:
        """``base`` with the searched fields taken from ``params``. A trial that stops early
        or keeps its best epoch judges epochs by the sweep's metric unless the base names
        its own ``metric_for_best_model``."""
        fields = {**self.base.model_dump(), **params}
        base = self.base
        if base.metric_for_best_model is None and (
            base.early_stopping_patience is not None or base.keep_best_epoch
        ):
            fields["metric_for_best_model"] = self.metric
        return BertFineTuneConfig.model_validate(fields)

    def trial_run_id(self, index: int, params: dict[str, Any]) -> str:
        model_name = params.get("model_name", self.base.model_name)
        return make_run_id(self.sweep_name, index, str(model_name))


def _check_spec(base: BertFineTuneConfig, name: str, spec: ParamSpec) -> None:
    """Every value (or range end) must pass the field's own validation."""
    if name == "model_name" and spec.is_range:
        raise ValueError('space.model_name: a model takes {"values": [...]}, not a range')
    candidates = spec.values if spec.values is not None else [spec.min, spec.max]
    for value in candidates:
        if name in INTEGER_FIELDS and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"space.{name}: {value!r} is not an integer")
        try:
            config = BertFineTuneConfig.model_validate({**base.model_dump(), name: value})
        except ValidationError as err:
            reasons = "; ".join(e["msg"] for e in err.errors(include_url=False))
            raise ValueError(f"space.{name}: {value!r} is not allowed ({reasons})") from None
        if name == "model_name":
            run_id = make_run_id("x" * 100, MAX_TRIALS - 1, config.model_name)
            if not is_safe_run_id(run_id):
                raise ValueError(
                    f"space.model_name: {str(value)[:80]!r} makes run ids longer than "
                    f"{MAX_RUN_ID_LENGTH} bytes; use a shorter model path"
                )


class SweepTrial(_Strict):
    """One trial in ``BertSweepOutput``."""

    trial_index: int
    run_id: str
    params: dict[str, Any]
    state: TrialState
    # The last evaluation (a pruned trial: at the rung where it stopped); empty if none.
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    epochs_completed: int = 0
    error: str | None = None


class BertSweepOutput(_Strict):
    sweep_name: str
    metric: SweepMetric
    best_run_id: str | None
    best_metric: float | None
    alias: str | None = None
    trials: list[SweepTrial]


class SweepTrialProgress(_Strict):
    """One entry of the sweep's ``progress`` query: a trial with its live training state."""

    trial_index: int
    run_id: str
    params: dict[str, Any]
    state: LiveTrialState = "pending"
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    epochs_completed: int = 0
    error: str | None = None
    phase: str = "pending"
    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0


class SweepProgress(_Strict):
    sweep_name: str
    metric: SweepMetric
    best_run_id: str | None
    num_trials: int
    trials: list[SweepTrialProgress]


class RungReport(_Strict):
    """A run paused at a rung: its evaluation at the end of ``epoch``."""

    run_id: str
    epoch: int
    eval_metrics: dict[str, float]


class RungDecision(_Strict):
    epoch: int
    keep_training: bool


class BertRunInput(_Strict):
    """Input of ``BertRunWorkflow``: one run, trained in segments that end at ``rungs``."""

    request: BertFineTuneRequest
    heartbeat_timeout_seconds: Annotated[int, Field(ge=5, le=600)] = 60
    # Epochs after which the run pauses and asks its parent whether to go on.
    rungs: list[int] = Field(default_factory=list)
    # Sweeps need evaluation data: a run without this metric fails with DatasetError.
    required_metric: SweepMetric | None = None
    # Start (and abandon) the run's ``BertExportWorkflow`` once it has committed. Sweeps
    # leave it False: they export only their best trial.
    export_after_commit: bool = False


class TrialObservation(_Strict):
    """What a proposal knows about an earlier trial (TPE learns from these)."""

    trial_index: int
    params: dict[str, Any]
    state: Literal["running", "succeeded", "pruned", "failed"]
    # The sweep's metric at the end (succeeded) or at the last rung (pruned).
    value: float | None = None
    # Rung evaluations: epoch -> metric.
    intermediate: dict[int, float] = Field(default_factory=dict)


class TrialProposalRequest(_Strict):
    """Input of ``propose_sweep_trials``: propose trials ``first_index .. first_index+count-1``."""

    space: dict[TunableField, ParamSpec]
    strategy: Strategy
    seed: int
    metric: SweepMetric
    num_trials: int
    first_index: Annotated[int, Field(ge=0)]
    count: Annotated[int, Field(ge=1, le=MAX_TRIALS)]
    history: list[TrialObservation] = Field(default_factory=list)


class SweepRunsCheck(_Strict):
    """Input of ``check_sweep_runs``: the sweep and the trial params already known."""

    sweep: BertSweepInput
    proposals: list[dict[str, Any]]


class SweepTrackingEnd(_Strict):
    """Input of ``close_sweep_tracking``: how the sweep ended, for its MLflow parent run."""

    sweep_name: str
    status: Literal["FINISHED", "FAILED", "KILLED"]
    metric: SweepMetric
    best_run_id: str | None = None
    best_metric: float | None = None
