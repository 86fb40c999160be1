"""Typed, versioned manifests: every small JSON file the product writes besides ``run.json``.

``run.json`` is a ``RunRecord`` (``shared/run_record.py``). Every other file is one of the
models below, and each is parsed only by its model's ``read``/``parse``; the module that owns
the file (named in each docstring, and in docs/architecture.md) is its one caller:

- ``ExportManifest``: ``{model_dir}/onnx/export.json`` (``shared/onnx_export.py``);
- ``CheckTexts``: ``{run_dir}/export_check_texts.json`` (``shared/onnx_export.py``);
- ``OwnerRecord``: ``{run_dir}/.owner.json`` (``run_folder/ownership.py``);
- ``FenceRecord``: ``{runs_root}/.fences/{run_id}.json`` (``run_folder/fencing.py``);
- ``CheckpointManifest``: ``checkpoint-{step}/bert_finetune_checkpoint.json``
  (``run_folder/checkpoints.py``);
- ``AliasPointer``: ``{runs_root}/_aliases/{alias}.json`` (``shared/aliases.py``);
- ``TrackingRecord``: ``{run_dir}/tracking.json`` (``tracking/trackers.py``).

Versioning: every file carries ``version`` (the export manifest names it ``format_version``,
its key since the first export). Files written before the field existed read as version 1.
A change older readers can safely ignore (a new optional field) keeps the version: unknown
keys are ignored, so a worker of the previous release still reads files a newer one wrote
during a rolling upgrade. A change they would misread raises the model's ``VERSION``; a
reader refuses a version newer than its own ``VERSION`` (``ManifestError``: upgrade it), and
the model converts older versions when it reads them.

``read`` raises ``OSError`` (``FileNotFoundError`` when the file is absent) or
``ManifestError`` (not JSON, a missing or mistyped field, a newer version); each caller keeps
its own answer to an unreadable file (an export not served, a checkpoint not resumed from,
nobody holding the fence...). ``write`` is atomic (temporary sibling, fsync, rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


def _plain_name(name: str) -> str:
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"{name[:100]!r} is not a file name inside the folder")
    return name


# A file name inside the export folder: never a path that could leave it.
PlainName = Annotated[str, AfterValidator(_plain_name)]


class ManifestError(ValueError):
    """A manifest file that is not a valid manifest of its kind: damaged, or written by a
    newer version of the product."""


def _reason(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


class Manifest(BaseModel):
    """A versioned JSON file: ``read``/``parse`` are the one place it is parsed."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # The newest version this code reads and writes.
    VERSION: ClassVar[int] = 1
    # What the file is, for error messages.
    KIND: ClassVar[str] = "manifest"

    version: int = 1

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version < 1:
            raise ValueError(f"version {version} does not exist (versions start at 1)")
        if version > cls.VERSION:
            raise ValueError(
                f"version {version} was written by a newer release (this one reads up to "
                f"{cls.VERSION}): upgrade this worker"
            )
        return version

    @classmethod
    def parse(cls, data: str | bytes, source: str) -> Self:
        """The manifest in ``data``; ``ManifestError`` naming ``source`` when it is invalid."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            raise ManifestError(f"{source} is not a valid {cls.KIND} ({_reason(err)})") from None

    @classmethod
    def read(cls, path: Path) -> Self:
        """The manifest at ``path``: ``OSError`` when it cannot be read (``FileNotFoundError``
        when absent), ``ManifestError`` when it is not a valid manifest of this kind."""
        return cls.parse(Path(path).read_bytes(), str(path))

    def to_json(self) -> dict[str, Any]:
        """The file's content, as JSON values (keys as written on disk)."""
        return self.model_dump(mode="json", by_alias=True)

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically (temporary sibling, fsync, rename)."""
        # Imported here so that this module depends on pydantic alone: shared/runs.py may
        # read and write manifests too.
        from shared.runs import write_json_atomic

        write_json_atomic(path, self.to_json())

    def create(self, path: Path) -> None:
        """Write ``path`` only if it does not exist yet (``FileExistsError`` otherwise): of
        two writers creating the file at once, exactly one succeeds."""
        with Path(path).open("x", encoding="utf-8") as handle:
            handle.write(json.dumps(self.to_json(), indent=2, sort_keys=True))


class ExportCheck(BaseModel):
    """What the export's checks measured (``export.json``'s ``check``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    texts: int
    # Absent from exports made before the PyTorch comparison used a spread of texts.
    fp32_texts_compared_with_pytorch: int | None = None
    max_fp32_logit_difference: float
    # None when no int8 graph was built (no check texts).
    int8_disagreements: int | None = None
    max_int8_disagreement: float
    # What the int8 check compared, per task (absent from exports made before tasks): the
    # texts' labels, label sets or scores, or the words' tags (token classification).
    int8_compared: int | None = None
    int8_unit: str | None = None
    # Regression: a score agrees within this distance of fp32's (a share of the scores'
    # spread on the check texts), and the largest distance measured.
    int8_score_tolerance: float | None = None
    max_int8_score_difference: float | None = None


class ExportManifest(Manifest):
    """``{model_dir}/onnx/export.json``, written last inside the export folder by
    ``shared.onnx_export.build_export`` and read by ``shared.onnx_export.load_manifest``
    (the inferencer's ``OnnxClassifier``, the export activity, ``bert-finetune runs``)."""

    KIND: ClassVar[str] = "ONNX export manifest"
    # 2: the export of a task other than single-label classification (``task``), which a
    # release before tasks would misread; single-label exports are still written as 1.
    VERSION: ClassVar[int] = 2

    # Named ``format_version`` on disk since the first export (older inferencers check it).
    version: int = Field(default=1, alias="format_version")
    served_graph: PlainName
    fp32_graph: PlainName = "model.onnx"
    tokenizer: PlainName
    input_names: list[str]
    label_names: list[str]
    pad_token_id: int = 0
    max_position_embeddings: int | None = None
    opset: int | None = None
    check: ExportCheck | None = None
    # Library versions that built the export (torch, transformers, onnxruntime).
    versions: dict[str, str] = Field(default_factory=dict)
    export_seconds: float | None = None
    # The digest of the run.json the export was built from; None for exports made inside
    # the commit itself (they are part of it).
    source_commit: str | None = None
    # What the graph's ``logits`` are (``shared.tasks``): [n, labels] for the sequence
    # tasks, [n, tokens, labels] for token classification. Version 1 files: single-label.
    task: str = "single_label_classification"

    @field_validator("pad_token_id", mode="before")
    @classmethod
    def _no_pad_token(cls, value: Any) -> Any:
        return 0 if value is None else value


class CheckTexts(Manifest):
    """``{run_dir}/export_check_texts.json``: the texts that decide whether the int8 graph
    is served, kept at commit (``shared.onnx_export.write_check_texts``/``read_check_texts``)."""

    KIND: ClassVar[str] = "export check texts file"

    texts: list[str]
    # The second text of each pair, for runs trained on pairs (same length as ``texts``).
    text_pairs: list[str] | None = None
    # The sweep whose trial this run is: only a sweep's best trial is exported after the
    # sweep (the others on request, ``bert-finetune export``).
    sweep: str | None = None


class OwnerRecord(Manifest):
    """``{run_dir}/.owner.json``: the workflow that trains the run
    (``services/trainer/run_folder/ownership.py``)."""

    KIND: ClassVar[str] = "run owner file"

    workflow_id: str
    # The process that claimed the folder (diagnostics only; absent from hand-made files).
    pid: int | None = None


class FenceRecord(Manifest):
    """``{runs_root}/.fences/{run_id}.json``: the attempt that last claimed the run folder
    (``services/trainer/run_folder/fencing.py``)."""

    KIND: ClassVar[str] = "run fence file"

    workflow_id: str
    workflow_run_id: str
    attempt: int
    # An overwrite: the commit (digest of ``run.json``) the attempt replaces; the run stays
    # complete and served until the attempt's commit swaps it (``run_folder/swap.py``).
    replaces: str | None = None


class CheckpointFile(BaseModel):
    """One file of a sealed checkpoint."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    size: int
    sha256: str


class CheckpointManifest(Manifest):
    """``checkpoint-{step}/bert_finetune_checkpoint.json``: seals a checkpoint the Trainer
    has finished writing (``services/trainer/run_folder/checkpoints.py``)."""

    KIND: ClassVar[str] = "checkpoint manifest"

    step: int
    attempt: int
    # The run's identity when the checkpoint was sealed (current or an earlier digest format).
    config_digest: str
    # Every file of the checkpoint but this manifest, by path relative to the checkpoint.
    files: dict[str, CheckpointFile]


class AliasPointer(Manifest):
    """``{runs_root}/_aliases/{alias}.json``: the run an alias points at, and its rollout: a
    canary run answering ``canary_percent`` percent of its requests, or a shadow run scoring
    every request unanswered (``shared/aliases.py``)."""

    KIND: ClassVar[str] = "alias pointer"
    # 2: a pointer with a canary or a shadow, which a release before rollouts would misread
    # (it would send every request to ``run_id``); pointers without one are still written as 1.
    VERSION: ClassVar[int] = 2

    alias: str
    run_id: str
    previous_run_id: str | None = None
    promoted_at: str
    # The workflow run that wrote this pointer: a retried promotion recognises its own write.
    promoted_by: str | None = None
    canary_run_id: str | None = None
    canary_percent: int | None = Field(default=None, ge=1, le=99)
    shadow_run_id: str | None = None

    @model_validator(mode="after")
    def _one_rollout(self) -> Self:
        if (self.canary_run_id is None) != (self.canary_percent is None):
            raise ValueError("canary_run_id and canary_percent go together")
        if self.canary_run_id is not None and self.shadow_run_id is not None:
            raise ValueError("an alias has a canary or a shadow, never both")
        return self

    @classmethod
    def version_for(cls, canary_run_id: str | None, shadow_run_id: str | None) -> int:
        """The version to write: 2 only when older readers would misread the pointer."""
        return 2 if canary_run_id is not None or shadow_run_id is not None else 1


class TrackingRecord(Manifest):
    """``{run_dir}/tracking.json``: ties every attempt of a run to one MLflow run, written by
    the run's first tracked attempt (``services/trainer/tracking/trackers.py``)."""

    KIND: ClassVar[str] = "run tracking file"

    tracking_key: str = Field(min_length=1)
    # The MLflow experiment the run is filed in (the experiment's or the sweep's name).
    experiment: str | None = None


# Every manifest kind (docs/architecture.md lists them; the tests check each one).
MANIFESTS: tuple[type[Manifest], ...] = (
    ExportManifest,
    CheckTexts,
    OwnerRecord,
    FenceRecord,
    CheckpointManifest,
    AliasPointer,
    TrackingRecord,
)
