"""A run's folder under the runs root: reuse or refuse, claim, clear, resume and commit.

A run folder is complete exactly when its ``run.json`` (a ``RunRecord``) exists; it is
written last, atomically, after the model files. A complete run's files are never modified
again except by an explicit ``overwrite``, which retires its record first (its ONNX export,
``onnx/``, is added after the commit under the run's lock: ``export.py``). Every write happens
through the attempt's fence (``fencing``), so a stale attempt never writes at all.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.trainer.run_folder import checkpoints, fencing, ownership
from services.trainer.run_folder.fencing import AttemptToken, RunFence
from shared.errors import INVALID_CONFIG, failure
from shared.logging import get_logger
from shared.run_record import (
    RunRecord,
    identity_fields,
    run_identity,
    schema_1_checkpoint_digest,
)
from shared.runs import (
    CHECKPOINTS_DIR,
    RUN_MANIFEST,
    commit_digest,
    is_complete,
    list_runs,
    read_record,
    resolve_run_dir,
    write_record,
)
from shared.types import BertFineTuneRequest, BertFineTuneResult

log = get_logger(__name__)

# Staged final models live beside the run folders (a name no run id can take) until the
# commit moves them in: a stale attempt's save never shows up inside a run folder.
STAGING_DIR = ".staging"

# Files a saved model folder must not keep: a pickle of the TrainingArguments (the run's
# settings live in run.json, and run folders hold no pickles).
_NOT_COMMITTED = ("training_args.bin",)


@dataclass(frozen=True)
class Ownership:
    """Who is training (the workflow id) and how to tell whether another workflow runs."""

    workflow_id: str
    is_running: Callable[[str], bool]


def epochs_wanted(request: BertFineTuneRequest) -> int:
    """The epochs a request asks to have trained before it returns."""
    return request.finish_at_epoch or request.pause_at_epoch or request.config.num_epochs


def covers(record: RunRecord, identity: str, epochs: int) -> bool:
    """Whether a finished run is the same work as a request for ``epochs`` epochs of
    ``identity``: a run stopped early never stands in for more epochs than it trained."""
    return record.identity == identity and record.trained_epochs() >= epochs


class RunDirectory:
    def __init__(self, runs_root: Path, run_id: str) -> None:
        runs_root.mkdir(parents=True, exist_ok=True)
        self.runs_root = runs_root
        self.run_id = run_id
        self.path = resolve_run_dir(runs_root, run_id)
        self._fence: RunFence | None = None

    @property
    def fence(self) -> RunFence:
        """This attempt's fence; only a claimed folder can be written."""
        if self._fence is None:
            raise RuntimeError(f"run {self.run_id!r} written before it was claimed")
        return self._fence

    def finished_record(self) -> RunRecord | None:
        return read_record(self.path) if is_complete(self.path) else None

    def refuse_conflicting_rerun(self, request: BertFineTuneRequest) -> None:
        """Before loading any data: a finished run under this id with another config (or
        fewer epochs than asked) is refused unless ``overwrite``."""
        record = self.finished_record()
        if record is None or request.overwrite:
            return
        if identity_fields(record.config) != identity_fields(request.config):
            raise failure(
                INVALID_CONFIG,
                f"run {self.run_id!r} already finished with a different config; use another "
                "experiment_name or set overwrite: true to replace it",
            )
        if record.trained_epochs() < epochs_wanted(request):
            raise failure(
                INVALID_CONFIG,
                f"run {self.run_id!r} stopped early after {record.trained_epochs()} epochs; set "
                "overwrite: true to train it again for more",
            )

    def reusable(self, request: BertFineTuneRequest, identity: str) -> RunRecord | None:
        """This run's own finished record when it is the same work, else None; a finished
        run on other data is refused."""
        record = self.finished_record()
        if record is None or request.overwrite:
            return None
        if record.reused_from and not self._source_unchanged(record):
            log.info("training.reuse_source_changed", reused_from=record.reused_from)
            return None  # claim() retires this pointer; the work is done again
        # The config matched (refuse_conflicting_rerun), so only the data can differ.
        if record.identity != identity:
            raise failure(
                INVALID_CONFIG,
                f"run {self.run_id!r} already finished on different data; use another "
                "experiment_name or set overwrite: true to replace it",
            )
        return record

    def _source_unchanged(self, pointer: RunRecord) -> bool:
        source = resolve_run_dir(self.runs_root, pointer.reused_from or "")
        return is_complete(source) and commit_digest(source) == pointer.source_commit

    def find_source(self, identity: str, epochs: int) -> RunRecord | None:
        """Another finished run (any experiment or sweep) that trained exactly this work.

        Only runs holding their own weights count: a reusing run's source is itself a run
        of the runs root, and is found directly.
        """
        for entry in list_runs(self.runs_root):
            record = entry.record
            if (
                record is not None
                and entry.run_id != self.run_id
                and record.reused_from is None
                and covers(record, identity, epochs)
            ):
                return record
        return None

    def claim(
        self, owner: Ownership | None, token: AttemptToken, overwrite: bool, identity: str
    ) -> None:
        """Make this workflow the folder's trainer and this attempt its only writer.

        Raises ``fencing.Superseded`` when a newer attempt holds the folder, or when the run
        is complete and may not be replaced. A finished run is retired under the run's lock
        for an ``overwrite`` (unless an earlier attempt of this same workflow run finished
        this very work: it lost its connection, and its result is reused), and so is a
        reuse pointer whose source changed (the work is done again).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            ownership.claim(self.path, owner.workflow_id, owner.is_running)
        record = self.finished_record()
        replace = record is not None and (
            bool(record.reused_from and not self._source_unchanged(record))
            or (overwrite and not self._finished_here(record, token, identity))
        )
        fence = RunFence(self.path, token)
        fence.claim(retire_finished_run=self._clear_finished_run if replace else None)
        self._fence = fence
        # Staging folders that older attempts of this run left behind (they crashed while
        # saving, or are stale and will find the fence closed).
        for leftover in (self.runs_root / STAGING_DIR).glob(f"{self.run_id}.attempt-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _finished_here(self, record: RunRecord, token: AttemptToken, identity: str) -> bool:
        """Whether an earlier attempt of this workflow run completed this same work."""
        holder = fencing.holder(self.path)
        return (
            record.identity == identity and holder is not None and holder.same_workflow_run(token)
        )

    def _clear_finished_run(self) -> None:
        """The record goes first, so a reader never sees a complete run with missing files."""
        (self.path / RUN_MANIFEST).unlink(missing_ok=True)
        for entry in self.path.iterdir():
            if entry.name not in (CHECKPOINTS_DIR, ownership.OWNER_FILE):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def checkpoint_digests(
        self, identity: str, request: BertFineTuneRequest, data: str
    ) -> set[str]:
        """The digests a checkpoint of this work may carry: today's, and version 1's."""
        legacy = schema_1_checkpoint_digest(request.config, data)
        return {identity[:16]} | ({legacy} if legacy else set())

    def resume_checkpoint(
        self, hint: str | None, digests: set[str]
    ) -> checkpoints.Checkpoint | None:
        return checkpoints.find_resume_checkpoint(self.path, hint, digests)

    def commit(
        self,
        save_model: Callable[[Path], None],
        record: RunRecord,
        attempt: int,
        export: Callable[[Path], None] | None = None,
    ) -> None:
        """Model files first (saved to a staging folder), ``run.json`` last and atomically,
        then the checkpoints and the owner claim go: the record now guards the folder.

        The move into the run folder happens under the fence: if a newer attempt took the
        folder while this one was saving, nothing is moved and ``Superseded`` is raised.
        """
        if not self.fence.still_current(force=True):
            raise fencing.Superseded("a newer attempt owns the run; not saving")
        staging = self.runs_root / STAGING_DIR / f"{self.run_id}.attempt-{attempt}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            save_model(staging)
            for name in _NOT_COMMITTED:
                (staging / name).unlink(missing_ok=True)
            if export is not None:
                export(staging)
            with self.fence.exclusive():
                for entry in staging.iterdir():
                    target = self.path / entry.name
                    if target.is_dir():
                        shutil.rmtree(target)
                    entry.replace(target)
                write_record(self.path, record)
                self._drop_training_leftovers()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # another run may be staging there too
                staging.parent.rmdir()

    def commit_reuse(self, record: RunRecord, source: RunRecord) -> RunRecord:
        """Complete this run as a pointer to ``source``'s model: no weights are copied; the
        record pins the source's commit, so an overwritten source is refused, not served."""
        source_dir = resolve_run_dir(self.runs_root, source.run_id)
        pointer = record.model_copy(
            update={"reused_from": source.run_id, "source_commit": commit_digest(source_dir)}
        )
        with self.fence.exclusive():
            write_record(self.path, pointer)
            self._drop_training_leftovers()
        return pointer

    def _drop_training_leftovers(self) -> None:
        shutil.rmtree(self.path / CHECKPOINTS_DIR, ignore_errors=True)
        (self.path / ownership.OWNER_FILE).unlink(missing_ok=True)


def reuse_record(request: BertFineTuneRequest, source: RunRecord, model_dir: Path) -> RunRecord:
    """The record of ``request``'s run when it reuses ``source``'s finished model."""
    result = source.result.model_copy(
        update={
            "run_id": request.run_id,
            "config": request.config,
            "model_dir": str(model_dir),
            "reused": True,
            "reused_from": source.run_id,
            "resumed_from_step": None,
        }
    )
    return source.model_copy(
        update={
            "run_id": request.run_id,
            "config": request.config,
            "identity": run_identity(request.config, source.data_fingerprint),
            "result": result,
        }
    )


def reused_result(record: RunRecord, run_dir: Path) -> BertFineTuneResult:
    """A finished run's result as returned again, by a later request for the same work."""
    # A run that reuses another's model keeps pointing at the folder holding the weights.
    model_dir = record.result.model_dir if record.reused_from else str(run_dir)
    return record.result.model_copy(
        update={
            "model_dir": model_dir,
            "reused": True,
            "epochs_completed": record.trained_epochs(),
            "stopped_early": record.stopped_early,
        }
    )
