"""A run's folder under the runs root: reuse or refuse, claim, clear, resume and commit.

A run folder is complete exactly when its ``run.json`` (a ``RunRecord``) exists; it is
written last, atomically, after the model files. A complete run's files are never modified
again except by an explicit ``overwrite`` (its ONNX export, ``onnx/``, is added after the
commit under the run's lock: ``export.py``). An overwrite keeps the old run complete and
served while it trains beside it; its commit stages the new files and ``run.json`` and swaps
them in under the run's lock (``swap.py``), so a failed or cancelled overwrite leaves the old
run as it was. Every write happens through the attempt's fence (``fencing``), so a stale
attempt never writes at all.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.trainer.run_folder import checkpoints, fencing, ownership, swap
from services.trainer.run_folder.checkpoint_uploads import CheckpointUploads
from services.trainer.run_folder.fencing import AttemptToken, RunFence
from shared.errors import INVALID_CONFIG, failure
from shared.logging import get_logger
from shared.run_record import (
    RunRecord,
    identity_before_new_fields,
    identity_fields,
    run_identity,
    schema_1_checkpoint_digest,
)
from shared.runs import (
    CHECKPOINTS_DIR,
    commit_digest,
    is_complete,
    list_runs,
    read_record,
    resolve_run_dir,
    unreadable_reason,
    write_record,
)
from shared.storage import store_for
from shared.storage.run_store import Claim, FenceToken, Refused
from shared.types import BertFineTuneRequest, BertFineTuneResult

log = get_logger(__name__)

# Staged final models live beside the run folders (a name no run id can take) until the
# commit moves them in: a stale attempt's save never shows up inside a run folder.
STAGING_DIR = ".staging"

# Files a saved model folder must not keep: a pickle of the TrainingArguments (the run's
# settings live in run.json, and run folders hold no pickles).
_NOT_COMMITTED = ("training_args.bin",)

# While an overwrite trains, the training logs of the run it replaces (its MLflow key, its
# TensorBoard events) wait here, so the new training starts its own; an abandoned overwrite
# puts them back, a commit drops them.
REPLACED_DIR = ".replaced"
_REPLACED_PARTIAL = f"{REPLACED_DIR}.partial"
# Tracking files a training attempt keeps in its run folder (``tracking/trackers.py``'s
# ``TRACKING_FILE`` and ``tensorboard_logger.py``'s ``EVENTS_DIR``).
TRACKING_FILES = ("tracking.json", "tensorboard")
# Not part of a commit: a swap leaves them in place (``swap.install``).
TRAINING_FILES = (
    CHECKPOINTS_DIR,
    ownership.OWNER_FILE,
    REPLACED_DIR,
    _REPLACED_PARTIAL,
    *TRACKING_FILES,
)


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
        # With an object store (``BERT_RUNS_URI``), the runs root is this worker's private
        # mirror: every run's run.json is brought up to date first, so reuse and conflict
        # checks decide on what the store holds; the claim and the commit go to the store too.
        self._store = store_for(runs_root)
        self._store_claim: Claim | None = None
        self._uploads: CheckpointUploads | None = None
        if self._store is not None:
            self._store.sync_records(runs_root)

    @property
    def location(self) -> str:
        """Where the run lives for users (its result's ``model_dir``): its folder, or its
        URI in the object store."""
        return self.location_of(self.run_id) if self._store is not None else str(self.path)

    def location_of(self, run_id: str) -> str:
        if self._store is not None:
            return f"{self._store.uri}/{run_id}"
        return str(self.runs_root / run_id)

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
        fewer epochs than asked, or a ``run.json`` that cannot be read) is refused unless
        ``overwrite``."""
        if request.overwrite:
            return
        if (reason := unreadable_reason(self.path)) is not None:
            raise failure(
                INVALID_CONFIG,
                f"run {self.run_id!r} is finished but its run.json cannot be read ({reason}: "
                "written by a newer version, or damaged); set overwrite: true to replace it, or "
                "use another experiment_name",
            )
        record = self.finished_record()
        if record is None:
            return
        finished, asked = identity_fields(record.config), identity_fields(request.config)
        if finished != asked:
            fields = sorted(
                k for k in finished.keys() | asked.keys() if finished.get(k) != asked.get(k)
            )
            raise failure(
                INVALID_CONFIG,
                f"run {self.run_id!r} already finished with a different config (differs in: "
                f"{', '.join(fields)}); use another experiment_name or set overwrite: true to "
                "replace it",
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
        if request.overwrite:
            return None
        record = self.finished_record()
        if record is None:
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
        is complete and may not be replaced. A finished run (readable or not) is replaced
        for an ``overwrite`` (unless an earlier attempt of this same workflow run finished
        this very work: it lost its connection, and its result is reused), and so is a
        reuse pointer whose source changed (the work is done again). Replaced means: it
        stays complete and served until this attempt's commit swaps it (``swap``).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._settle()
        if owner is not None:
            ownership.claim(self.path, owner.workflow_id, owner.is_running)
        if unreadable_reason(self.path) is not None:
            replace = overwrite
        else:
            record = self.finished_record()
            replace = record is not None and (
                bool(record.reused_from and not self._source_unchanged(record))
                or (overwrite and not self._finished_here(record, token, identity))
            )
        fence = RunFence(self.path, token)
        fence.claim(replace_finished_run=self._set_aside_tracking if replace else None)
        if self._store is not None:
            try:
                self._store_claim = self._store.claim(
                    self.run_id,
                    FenceToken(token.workflow_id, token.workflow_run_id, token.attempt),
                    may_replace=replace,
                )
            except Refused as err:
                raise fencing.Superseded(str(err)) from None
        self._fence = fence
        # Staging folders that older attempts of this run left behind (they crashed while
        # saving, or are stale and will find the fence closed).
        self._settle(drop_staging=True)

    def _settle(self, drop_staging: bool = False) -> None:
        """Under the run's lock: finish a swap that was cut off (``swap``); then, with
        ``drop_staging``, remove the staging folders older attempts of this run left."""
        with fencing.run_lock(self.path):
            leftovers = [swap.finish_interrupted(self.path)]
            if drop_staging:
                leftovers += (self.runs_root / STAGING_DIR).glob(f"{self.run_id}.attempt-*")
        for leftover in leftovers:
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)

    def _finished_here(self, record: RunRecord, token: AttemptToken, identity: str) -> bool:
        """Whether an earlier attempt of this workflow run completed this same work (and
        not merely set out to replace it: the folder no longer holds the commit it
        replaced)."""
        holder = fencing.holder(self.path)
        return (
            record.identity == identity
            and holder is not None
            and holder.same_workflow_run(token)
            and fencing.replaced_commit(self.path) != commit_digest(self.path)
        )

    def _set_aside_tracking(self) -> None:
        """Under the lock, at an overwrite's claim: the replaced run's training logs wait in
        ``REPLACED_DIR`` (the new training starts its own; see ``abandon_replacement``).
        An earlier attempt of the overwrite already did it when the folder exists."""
        aside, partial = self.path / REPLACED_DIR, self.path / _REPLACED_PARTIAL
        if aside.exists():
            return
        present = [name for name in TRACKING_FILES if (self.path / name).exists()]
        if not present and not partial.exists():
            return
        partial.mkdir(exist_ok=True)  # it exists when a claim was cut off here: finish it
        for name in present:
            (self.path / name).replace(partial / name)
        partial.replace(aside)

    def abandon_replacement(self, workflow_id: str) -> bool:
        """After a cancelled or failed overwrite by ``workflow_id``: remove its training
        leftovers (checkpoints, claim, logs) and put the replaced run's logs back; the
        complete run it was replacing stays exactly as it was. True when there was one."""
        with fencing.run_lock(self.path):
            retired = swap.finish_interrupted(self.path)
            abandoned = is_complete(self.path) and ownership.owner_of(self.path) == workflow_id
            if abandoned:
                fencing.release(self.path)  # a stale attempt of it writes nothing more
                for name in (CHECKPOINTS_DIR, *TRACKING_FILES):
                    _remove(self.path / name)
                for aside in (self.path / _REPLACED_PARTIAL, self.path / REPLACED_DIR):
                    if aside.is_dir():
                        for entry in list(aside.iterdir()):
                            entry.replace(self.path / entry.name)
                        aside.rmdir()
                (self.path / ownership.OWNER_FILE).unlink(missing_ok=True)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        if abandoned:
            log.info("training.overwrite_abandoned", run_id=self.run_id)
        return abandoned

    def checkpoint_digests(
        self, identity: str, request: BertFineTuneRequest, data: str
    ) -> set[str]:
        """The digests a checkpoint of this work may carry: today's, the one from before the
        newest fields existed (``identity_before_new_fields``), and version 1's."""
        legacy = schema_1_checkpoint_digest(request.config, data)
        before = identity_before_new_fields(request.config, data)[:16]
        return {identity[:16], before} | ({legacy} if legacy else set())

    def resume_checkpoint(
        self, hint: str | None, digests: set[str]
    ) -> checkpoints.Checkpoint | None:
        if self._store is not None:
            self._fetch_newer_checkpoint()
        return checkpoints.find_resume_checkpoint(self.path, hint, digests)

    def _fetch_newer_checkpoint(self) -> None:
        """With an object store: the store's newest sealed checkpoint, when this folder has
        none as new (the attempt that sealed it ran on another trainer). It is verified like
        any local checkpoint before training resumes from it."""
        assert self._store is not None
        stored = self._store.checkpoints(self.run_id, checkpoints.MANIFEST_NAME)
        if not stored:
            return
        newest_local = max(
            (
                seal.step
                for path in checkpoints.sealed_checkpoints(self.path)
                if (seal := checkpoints.read_seal(path)) is not None
            ),
            default=-1,
        )
        relative = stored[0]
        if int(relative.rsplit("-", 1)[-1]) <= newest_local:
            return
        target = self.path / relative
        shutil.rmtree(target, ignore_errors=True)
        self._store.download_checkpoint(self.run_id, relative, target, checkpoints.MANIFEST_NAME)

    def checkpoint_sealed(self, checkpoint: Path) -> None:
        """After this attempt sealed ``checkpoint``: with an object store, upload it in the
        background (``checkpoint_uploads``); training goes on at once."""
        if self._store is None:
            return
        if self._uploads is None:
            store, run_id = self._store, self.run_id

            def upload(relative: str, folder: Path, wanted: Callable[[], bool]) -> None:
                store.upload_checkpoint(run_id, relative, folder, checkpoints.MANIFEST_NAME, wanted)

            snapshots = self.runs_root / STAGING_DIR / f"{self.run_id}.uploads"
            self._uploads = CheckpointUploads(upload, snapshots)
        self._uploads.submit(checkpoint.relative_to(self.path).as_posix(), checkpoint)

    def close_uploads(self, wait: bool = False) -> None:
        """Stop uploading checkpoints (``wait``: after the pending ones are in the store)."""
        if self._uploads is not None:
            if wait:
                self._uploads.flush()
            self._uploads.close()

    def commit(
        self,
        save_model: Callable[[Path], None],
        record: RunRecord,
        attempt: int,
        export: Callable[[Path], None] | None = None,
    ) -> None:
        """Model files and ``run.json`` are staged first, then swapped in under the fence
        (``swap.install``: ``run.json`` last, the commit it replaces, if any, retired in the
        same step); the checkpoints and the owner claim go: the record now guards the folder.

        If a newer attempt took the folder while this one was saving, nothing is moved and
        ``Superseded`` is raised.
        """
        if not self.fence.still_current(force=True):
            raise fencing.Superseded("a newer attempt owns the run; not saving")

        def stage(staging: Path) -> None:
            save_model(staging)
            for name in _NOT_COMMITTED:
                (staging / name).unlink(missing_ok=True)
            if export is not None:
                export(staging)
            write_record(staging, record)

        self._stage_and_swap(stage, f"attempt-{attempt}")

    def commit_reuse(self, record: RunRecord, source: RunRecord) -> RunRecord:
        """Complete this run as a pointer to ``source``'s model: no weights are copied; the
        record pins the source's commit, so an overwritten source is refused, not served."""
        source_dir = resolve_run_dir(self.runs_root, source.run_id)
        pointer = record.model_copy(
            update={"reused_from": source.run_id, "source_commit": commit_digest(source_dir)}
        )
        self._stage_and_swap(lambda staging: write_record(staging, pointer), "attempt-reuse")
        return pointer

    def _stage_and_swap(self, stage: Callable[[Path], None], name: str) -> None:
        staging = self.runs_root / STAGING_DIR / f"{self.run_id}.{name}"
        shutil.rmtree(staging, ignore_errors=True)
        retired: Path | None = None
        try:
            stage(staging)
            with self.fence.exclusive():
                self._publish(staging)
                retired = swap.install(self.path, staging, keep=TRAINING_FILES)
                self._drop_training_leftovers()
        finally:
            # A swap cut off midway still needs its staged files: the next writer finishes it.
            pending = swap.pending_staging(self.path)
            if pending is None or pending.resolve() != staging.resolve():
                shutil.rmtree(staging, ignore_errors=True)
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
            with contextlib.suppress(OSError):  # another run may be staging there too
                staging.parent.rmdir()

    def _publish(self, staging: Path) -> None:
        """With an object store, the staged commit goes there first (files, then run.json
        with a conditional write); the local swap that follows only mirrors it. A lost
        conditional write is ``Superseded``: nothing of this attempt becomes visible."""
        if self._store is None:
            return
        if self._store_claim is None:
            raise RuntimeError(f"run {self.run_id!r} committed before it was claimed")
        try:
            self._store.publish(self.run_id, staging, self._store_claim)
        except Refused as err:
            raise fencing.Superseded(str(err)) from None

    def _drop_training_leftovers(self) -> None:
        self.close_uploads()
        if self._store is not None:
            self._store.drop_checkpoints(self.run_id)
        shutil.rmtree(self.path / CHECKPOINTS_DIR, ignore_errors=True)
        shutil.rmtree(self.path / REPLACED_DIR, ignore_errors=True)
        shutil.rmtree(self.path / _REPLACED_PARTIAL, ignore_errors=True)
        (self.path / ownership.OWNER_FILE).unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def reuse_record(
    request: BertFineTuneRequest, source: RunRecord, model_dir: Path | str
) -> RunRecord:
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


def reused_result(record: RunRecord, run_dir: Path | str) -> BertFineTuneResult:
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
