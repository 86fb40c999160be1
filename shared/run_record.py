"""A run's identity and its metadata file (``run.json``) as a versioned, typed record.

``run.json`` is written last, atomically, by the trainer's commit stage and read by reuse,
the inferencer, the ``runs`` listing and the CLI. Every reader goes through ``RunRecord``;
records written by older versions (no ``schema_version``: version 1) still validate.

Identity: two runs are the same work exactly when their configs agree on every field that
changes the trained model (not ``use_gpu`` nor ``checkpoint_steps``) and their data
fingerprints match. Fields equal to their default are left out of the identity, so adding a
defaulted field to ``BertFineTuneConfig`` keeps every earlier identity (and checkpoint
digest) unchanged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.types import BertFineTuneConfig, BertFineTuneResult

# 1: the first round (no schema_version field; a "metrics" block repeating the result).
# 2: identity, epochs, evaluation history, confusion matrix, reuse pointer.
SCHEMA_VERSION = 2

# Settings of how a run is executed, not of what it learns.
NOT_IDENTITY = frozenset({"use_gpu", "checkpoint_steps"})
# The config fields of schema version 1, in their declaration order (the legacy digest).
SCHEMA_1_CONFIG_FIELDS = (
    "model_name",
    "dataset_name",
    "dataset_config_name",
    "train_file",
    "validation_file",
    "text_column",
    "label_column",
    "num_epochs",
    "batch_size",
    "learning_rate",
    "max_seq_length",
    "max_train_samples",
    "max_eval_samples",
    "seed",
    "use_gpu",
    "checkpoint_steps",
)


# Fields added with a default that differs from what runs trained before them did, and the
# value they had implicitly then. Such a field is left out of the identity at that value, not at
# its default, so a run trained before it existed is never reused for the new default; records
# written before it read it as that value.
BEFORE_FIELD_EXISTED: dict[str, Any] = {"group_by_length": False}


def identity_fields(config: BertFineTuneConfig) -> dict[str, Any]:
    """The config fields that define what is trained, without those at their default (or,
    for fields in ``BEFORE_FIELD_EXISTED``, at the value they had before they existed)."""
    dumped = config.model_dump(mode="json")
    baseline = {**BertFineTuneConfig().model_dump(mode="json"), **BEFORE_FIELD_EXISTED}
    return {
        name: value
        for name, value in dumped.items()
        if name not in NOT_IDENTITY and value != baseline[name]
    }


def identity_before_new_fields(config: BertFineTuneConfig, data_fingerprint: str) -> str:
    """The identity this config had before the fields of ``BEFORE_FIELD_EXISTED`` existed:
    checkpoints sealed then resume under it (only the batch order differs)."""
    return run_identity(config.model_copy(update=BEFORE_FIELD_EXISTED), data_fingerprint)


def run_identity(config: BertFineTuneConfig, data_fingerprint: str) -> str:
    """A digest of the identity fields and the data: equal exactly for the same work."""
    payload = json.dumps(
        {"config": identity_fields(config), "data": data_fingerprint}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def schema_1_checkpoint_digest(config: BertFineTuneConfig, data_fingerprint: str) -> str | None:
    """The config digest version 1 sealed checkpoints with, or None when the config uses a
    field version 1 did not have (no such checkpoint can exist)."""
    later = set(BertFineTuneConfig.model_fields) - set(SCHEMA_1_CONFIG_FIELDS)
    # Fields of BEFORE_FIELD_EXISTED count at the value version 1 had (only the batch order
    # differs), so a run of today's defaults still resumes a version 1 checkpoint.
    config = config.model_copy(update=BEFORE_FIELD_EXISTED)
    baseline = BertFineTuneConfig().model_copy(update=BEFORE_FIELD_EXISTED)
    if any(getattr(config, name) != getattr(baseline, name) for name in later):
        return None
    payload = config.model_dump_json(include=set(SCHEMA_1_CONFIG_FIELDS)) + data_fingerprint
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class EpochEvaluation(BaseModel):
    """The evaluation at the end of one epoch."""

    epoch: int
    global_step: int
    metrics: dict[str, float]


class RunRecord(BaseModel):
    """The content of ``run.json``: what was trained, on what, and how it went."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str
    config: BertFineTuneConfig
    data_fingerprint: str
    identity: str = ""
    label_names: list[str]
    result: BertFineTuneResult
    global_step: int = 0
    epochs_completed: int = 0
    stopped_early: bool = False
    eval_history: list[EpochEvaluation] = Field(default_factory=list)
    # Rows: true label, columns: predicted label, in ``label_names`` order. Only in records
    # committed before it moved to ``confusion_matrix.json``: read it with
    # ``shared.runs.read_confusion_matrix``.
    confusion_matrix: list[list[int]] | None = None
    # Set when this run reuses another run's model: that run's id and its commit digest at
    # the time, so a later overwrite of the source is noticed instead of served.
    reused_from: str | None = None
    source_commit: str | None = None
    attempt: int = 1
    versions: dict[str, str] = Field(default_factory=dict)
    finished_at: float = 0.0

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        """Read a ``run.json`` of any schema version this code knows."""
        data = json.loads(text)
        if isinstance(data, dict) and "schema_version" not in data:
            data = _upgrade_schema_1(data)
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = {**data, "config": {**BEFORE_FIELD_EXISTED, **data["config"]}}
        version = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {version} is newer than this worker's {SCHEMA_VERSION}"
            )
        return cls.model_validate(data)

    @model_validator(mode="after")
    def _fill_identity(self) -> RunRecord:
        if not self.identity:
            self.identity = run_identity(self.config, self.data_fingerprint)
        return self

    def trained_epochs(self) -> int:
        """Epochs the run counts as trained for (what reuse compares): all of
        ``num_epochs`` unless a sweep stopped it early. A run ended by its
        ``early_stopping_patience`` is finished work for its config: it covers ``num_epochs``
        (``epochs_completed`` says where it stopped)."""
        if self.patience_stopped():
            return self.config.num_epochs
        return self.epochs_completed or self.config.num_epochs

    def patience_stopped(self) -> bool:
        """Whether early stopping (``early_stopping_patience``) ended the run before
        ``num_epochs``; a sweep's pruning sets ``stopped_early`` instead."""
        return (
            self.config.early_stopping_patience is not None
            and not self.stopped_early
            and 0 < self.epochs_completed < self.config.num_epochs
        )


def _upgrade_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 record: the step comes from its metrics block, which is dropped (it
    repeated ``result``); what version 1 did not store is computed on validation."""
    upgraded = dict(data)
    legacy_metrics = upgraded.pop("metrics", None) or {}
    config = upgraded.get("config") or {}
    upgraded["schema_version"] = 1
    upgraded.setdefault("global_step", int(legacy_metrics.get("global_step", 0)))
    upgraded.setdefault("epochs_completed", int(config.get("num_epochs", 0)))
    return upgraded
