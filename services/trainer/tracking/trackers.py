"""Experiment tracking for one training attempt: MLflow and/or TensorBoard, opt-in by settings.

With neither ``MLFLOW_TRACKING_URI`` nor ``BERT_TENSORBOARD`` set on the trainer, a
``RunTracking`` has no trackers: no callback is added and nothing MLflow- or TensorBoard-related
is imported. Otherwise the ``TrackingCallback`` (``training/callbacks.py``) feeds every tracker
with the run's params, every value the Trainer logs (loss, learning rate, per-epoch and final
evaluation, throughput), the confusion matrix of each evaluation, and tags naming the run, its
experiment or sweep, the attempt and the model folder. ``end(outcome)`` closes the attempt: a
finished run is marked FINISHED, a cancelled one KILLED, a failed one FAILED, and an interrupted
one stays RUNNING for the attempt that resumes it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import metrics
from shared.logging import get_logger
from shared.manifests import ManifestError, TrackingRecord
from shared.settings import Settings
from shared.types import BertFineTuneRequest, BertFineTuneResult

log = get_logger(__name__)

# In the run folder: the key that ties every attempt of the run to one MLflow run.
TRACKING_FILE = "tracking.json"
# The activity's outcomes (``bert_training_run_duration_seconds{outcome}``) as MLflow statuses;
# interrupted and superseded attempts leave the run RUNNING: a retry continues it.
STATUS_BY_OUTCOME = {"succeeded": "FINISHED", "cancelled": "KILLED", "failed": "FAILED"}
_RUN_INDEX = re.compile(r"^(?P<experiment>.+?)-run-(?P<index>\d+)-")


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs are tracked: an MLflow server, TensorBoard event files, or nowhere."""

    mlflow_tracking_uri: str | None = None
    tensorboard: bool = False
    # Promotions are mirrored as versions of this MLflow registered model (with the alias).
    registered_model: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.mlflow_tracking_uri or self.tensorboard)

    @classmethod
    def from_settings(cls, settings: Settings) -> TrackingConfig:
        return cls(
            settings.mlflow_tracking_uri, settings.tensorboard, settings.mlflow_registered_model
        )


@dataclass(frozen=True)
class RunNames:
    """How a run is filed in the tracker: its experiment (or sweep) and its place in it."""

    experiment: str
    run_index: int | None
    sweep: str | None = None
    searched: tuple[str, ...] = ()


def run_names(request: BertFineTuneRequest) -> RunNames:
    """The one place that reads a request's experiment, sweep and trial.

    Workflows say it in ``request.context``; without one (an older client, a test calling
    the activity directly) the run id tells, being ``{experiment_name}-run-{index}-{model}``.
    """
    match = _RUN_INDEX.match(request.run_id)
    index = int(match["index"]) if match else None
    context = request.context
    if context is None:
        return RunNames(
            experiment=match["experiment"] if match else request.run_id, run_index=index
        )
    if context.kind == "sweep":
        return RunNames(
            experiment=context.name,
            run_index=context.trial_index if context.trial_index is not None else index,
            sweep=context.name,
            searched=tuple(context.params),
        )
    return RunNames(experiment=context.name, run_index=index)


def read_tracking_file(run_dir: Path) -> TrackingRecord | None:
    """The run's tracking file; None when the run was never tracked or the file is unreadable."""
    try:
        return TrackingRecord.read(run_dir / TRACKING_FILE)
    except (OSError, ManifestError):
        return None


def close_cancelled_run(config: TrackingConfig, run_dir: Path) -> None:
    """A run cancelled while no attempt was running (nobody else will close it): mark its
    MLflow run KILLED, from a background thread so removing the run folder never waits."""
    tracking = read_tracking_file(run_dir)
    if not config.mlflow_tracking_uri or tracking is None:
        return
    import threading

    from services.trainer.tracking.mlflow_logger import mark_run_killed

    threading.Thread(
        target=mark_run_killed,
        args=(
            config.mlflow_tracking_uri,
            tracking.experiment or "",
            tracking.tracking_key,
        ),
        name="mlflow-cancelled",
        daemon=True,
    ).start()


def _flat_params(request: BertFineTuneRequest) -> dict[str, str]:
    return {key: str(value) for key, value in request.config.model_dump(mode="json").items()}


class RunTracking:
    """The trackers of one attempt, fed by ``training.callbacks.TrackingCallback`` and
    closed by ``end()``."""

    def __init__(
        self,
        config: TrackingConfig,
        request: BertFineTuneRequest,
        attempt: int,
        run_dir: Path,
        workflow_id: str = "",
    ) -> None:
        self.config = config
        self._request = request
        self._attempt = attempt
        self._run_dir = run_dir
        self._workflow_id = workflow_id
        self._names = run_names(request)
        self._mlflow: Any = None
        self._tensorboard: Any = None
        self._confusion_source: Callable[[], list[list[int]] | None] = lambda: None
        self._max_steps = 0
        self._stopped_at: tuple[int, float] | None = None
        self._started = False

    @property
    def mlflow(self) -> Any:
        """The MLflow logger once training began (None without MLflow)."""
        return self._mlflow

    def watch_confusion_matrix(self, source: Callable[[], list[list[int]] | None]) -> None:
        """Where ``log_confusion_matrix`` reads the latest evaluation's matrix (rows: true
        label, columns: predicted)."""
        self._confusion_source = source

    # Fed by TrackingCallback (training thread).

    def begin(
        self,
        resumed_from_step: int | None,
        max_steps: int,
        params: dict[str, str],
        tags: dict[str, str],
    ) -> None:
        if self._started:
            return
        self._started = True
        self._max_steps = max_steps
        params = {**_flat_params(self._request), **params}
        tags = {
            **self._tags(),
            **tags,
            "bert_finetune.resumed_from_step": str(resumed_from_step or 0),
        }
        if self.config.mlflow_tracking_uri:
            from services.trainer.tracking.mlflow_logger import MlflowRunLogger

            self._mlflow = MlflowRunLogger(self.config.mlflow_tracking_uri)
            self._mlflow.start(self._spec(tags), params)
            self._mlflow.set_tags(tags)  # a resumed run gets this attempt's tags too
        if self.config.tensorboard:
            from services.trainer.tracking.tensorboard_logger import TensorBoardRunLogger

            self._tensorboard = TensorBoardRunLogger(self._run_dir)
            self._tensorboard.start(resumed_from_step, params)
        log.info(
            "tracking.started",
            mlflow=self._mlflow is not None,
            tensorboard=self._tensorboard is not None,
            resumed_from_step=resumed_from_step,
        )

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        if not values:
            return
        if self._mlflow is not None:
            self._mlflow.log_metrics(values, step)
        if self._tensorboard is not None:
            self._tensorboard.log_metrics(values, step)

    def log_confusion_matrix(self, labels: list[str], step: int) -> None:
        matrix = self._confusion_source()
        if matrix is None:
            return
        if len(labels) != len(matrix):  # a model without label names
            labels = [str(index) for index in range(len(matrix))]
        if self._mlflow is not None:
            self._mlflow.log_json(
                f"confusion_matrix/step-{step:07d}.json",
                confusion_table(labels, matrix),
            )
        if self._tensorboard is not None:
            self._tensorboard.log_confusion_matrix(labels, matrix, step)

    def training_stopped(self, global_step: int, epoch: float) -> None:
        self._stopped_at = (global_step, epoch)

    def count_error(self, where: str) -> None:
        """A tracking step failed on our side; counted against every tracker it affects."""
        log.exception("tracking.error", where=where)
        for tracker, enabled in (
            ("mlflow", bool(self.config.mlflow_tracking_uri)),
            ("tensorboard", self.config.tensorboard),
        ):
            if enabled:
                metrics.TRACKING_ERRORS.labels(tracker=tracker).inc()

    # Called by the activity when the attempt is over (any thread, any outcome).

    def end(self, outcome: str, result: BertFineTuneResult | None = None) -> None:
        """Close the attempt's trackers; never raises, waits a few seconds at most.

        ``outcome`` is the activity's (``succeeded``, ``failed``, ``cancelled``,
        ``interrupted``, ``superseded``); ``result`` tells a paused or pruned trial apart.
        """
        try:
            if self._started or self._reopen_for_end(result):
                self._end(outcome, result)
        except Exception:
            self.count_error("end")

    def _reopen_for_end(self, result: BertFineTuneResult | None) -> bool:
        """An attempt that trained nothing still closes the MLflow run earlier attempts
        opened: a pruned trial finished from its paused checkpoint, or a retry that failed
        before training. A reused result has nothing of its own to close."""
        if not self.config.mlflow_tracking_uri or read_tracking_file(self._run_dir) is None:
            return False
        if result is not None and (result.reused or result.reused_from):
            return False
        from services.trainer.tracking.mlflow_logger import MlflowRunLogger

        self._mlflow = MlflowRunLogger(self.config.mlflow_tracking_uri)
        self._mlflow.start(self._spec(self._tags()), {})
        return True

    def _end(self, outcome: str, result: BertFineTuneResult | None) -> None:
        stopped_step, epoch = self._stopped_at or (0, 0.0)
        status = STATUS_BY_OUTCOME.get(outcome)
        state = outcome
        if result is not None and result.paused:
            state, status = "paused", None  # the next execution continues the same run
        elif result is not None and result.stopped_early:
            state = "pruned"
        if outcome == "succeeded" and state != "paused" and self._stopped_at is not None:
            final = {"epochs_completed": float(epoch), "pruned": float(state == "pruned")}
            self.log_metrics(final, stopped_step)
        if self._mlflow is not None:
            self._mlflow.set_tags({"bert_finetune.state": state})
            self._mlflow.end(status)
        if self._tensorboard is not None:
            self._tensorboard.end()
        log.info("tracking.ended", state=state)

    def _spec(self, tags: dict[str, str]) -> Any:
        from services.trainer.tracking.mlflow_logger import RunSpec

        return RunSpec(
            experiment_name=self._names.sweep or self._names.experiment,
            run_name=self._request.run_id,
            tracking_key=self._tracking_key(),
            tags=tags,
            sweep_name=self._names.sweep,
        )

    def _tags(self) -> dict[str, str]:
        tags = {
            "bert_finetune.run_id": self._request.run_id,
            "bert_finetune.experiment": self._names.experiment,
            "bert_finetune.attempt": str(self._attempt),
            "bert_finetune.model_dir": str(self._run_dir),
            "bert_finetune.workflow_id": self._workflow_id,
            "bert_finetune.model_name": self._request.config.model_name,
        }
        if self._names.run_index is not None:
            tags["bert_finetune.run_index"] = str(self._names.run_index)
        if self._names.sweep is not None:
            tags["bert_finetune.sweep"] = self._names.sweep
            tags["bert_finetune.role"] = "trial"
            tags["bert_finetune.searched_params"] = ",".join(self._names.searched)
        return tags

    def _tracking_key(self) -> str:
        """The run folder's tracking key, created by the run's first attempt."""
        existing = read_tracking_file(self._run_dir)
        if existing is not None:
            return existing.tracking_key
        key = uuid.uuid4().hex
        if self._run_dir.is_dir():  # never recreate a folder a cancel has just removed
            try:
                TrackingRecord(
                    tracking_key=key, experiment=self._names.sweep or self._names.experiment
                ).write(self._run_dir / TRACKING_FILE)
            except OSError:
                # Without the file a retry starts a new MLflow run; this attempt still logs.
                self.count_error("tracking_file")
        return key


def confusion_table(labels: list[str], matrix: list[list[int]]) -> dict[str, Any]:
    """A confusion matrix as MLflow's table layout (rows: true label, columns: predicted)."""
    return {
        "columns": ["true_label", *labels],
        "data": [[label, *row] for label, row in zip(labels, matrix, strict=True)],
    }
