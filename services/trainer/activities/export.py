"""The ``export_run`` activity: add a committed run's ONNX export, under the run's lock.

A run commits its model and ``run.json`` without waiting for the export (several seconds
for a 6-layer BERT on CPU, a minute for a large model): ``BertExportWorkflow`` runs this
activity afterwards on a trainer. The run's own files are never touched. The export is
built in ``$BERT_RUNS_DIR/.staging`` and moved into ``{run}/onnx`` in one rename, holding
the same lock every training attempt writes under (``fencing.run_lock``), and only if the
run still holds the commit it was built from: an export of a run that was overwritten or
removed meanwhile is dropped, never published next to the new model. Its ``export.json``
names that commit (``source_commit``), and the inferencer serves an export only while it
matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
import uuid
from pathlib import Path

from temporalio import activity

from services.trainer.run_folder.fencing import run_lock
from services.trainer.run_folder.run_directory import STAGING_DIR
from shared.errors import failure
from shared.export_types import EXPORT_ACTIVITY, EXPORT_FAILED, BertExportInput, BertExportOutput
from shared.instrumentation import ExportRecorder, activity_scope
from shared.logging import get_logger
from shared.onnx_export import (
    EXPORT_DIR,
    OnnxExportError,
    build_export,
    commit_of,
    is_current_export,
    publish_export,
    read_check_sample,
    read_manifest,
)
from shared.runs import resolve_served_run, swap_pending
from shared.storage import store_for

log = get_logger(__name__)

HEARTBEAT_SECONDS = 5.0
# Staging folders older than this were left by a crashed export: removed by the next one.
STALE_STAGING_SECONDS = 3600.0
# Commits of one run followed by one export (a run overwritten again and again meanwhile).
MAX_COMMITS_FOLLOWED = 3


def export_run(
    runs_root: Path, run_id: str, abandoned: threading.Event | None = None
) -> BertExportOutput:
    """Export ``run_id``'s model (the reused run's, for a run that reused one) as committed
    now; when the run is committed anew while the graph is built, build again for the new
    commit (``MAX_COMMITS_FOLLOWED`` times): the new commit's own export request may have
    found this one running and left the work to it.

    ``abandoned`` set (the activity was cancelled or timed out): publish nothing.
    Raises ``RunNotFound`` for a missing or incomplete run and ``ExportFailed`` when the
    graph cannot be built or does not reproduce the model (the run stays served by PyTorch).
    """
    served = resolve_served_run(runs_root, run_id)
    model_dir = served.model_dir
    output = BertExportOutput(run_id=run_id, exported_run_id=model_dir.name)
    started = time.monotonic()
    for _ in range(MAX_COMMITS_FOLLOWED):
        source_commit = commit_of(model_dir)
        if source_commit is None:  # removed meanwhile: nothing committed to export
            return _finished(output, "superseded")
        if is_current_export(model_dir):
            return _finished(output, "already_exported", _served_graph(model_dir))
        outcome, graph = _export_commit(runs_root, model_dir, source_commit, abandoned)
        if outcome != "superseded":
            return _finished(output, outcome, graph, round(time.monotonic() - started, 3))
    return _finished(output, "superseded")


def _export_commit(
    runs_root: Path, model_dir: Path, source_commit: str, abandoned: threading.Event | None
) -> tuple[str, str | None]:
    """Build the export of ``source_commit`` and publish it if the folder still holds it:
    (outcome, served graph)."""
    staging_root = runs_root / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(staging_root, model_dir.name)
    staging = staging_root / f"{model_dir.name}.export-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    # The texts (and, for a run trained on pairs, their second texts) kept at commit.
    sample = read_check_sample(model_dir)
    try:
        try:
            manifest = build_export(
                model_dir,
                staging,
                sample.texts if sample is not None else None,
                source_commit=source_commit,
                check_pairs=sample.text_pairs if sample is not None else None,
            )
        except OnnxExportError as err:
            if commit_of(model_dir) != source_commit:
                return "superseded", None  # the files changed under the build
            log.warning("export.failed", run_id=model_dir.name, error=str(err)[:500])
            raise failure(EXPORT_FAILED, f"{err}; the run stays served by PyTorch") from None
        with run_lock(model_dir):
            if abandoned is not None and abandoned.is_set():
                return "abandoned", None
            # A swap cut off midway (swap.py) may have mixed the files the build read.
            if swap_pending(model_dir) or commit_of(model_dir) != source_commit:
                return "superseded", None
            if is_current_export(model_dir):  # a concurrent export of this commit landed
                return "already_exported", _served_graph(model_dir)
            publish_export(staging, model_dir)
            # With an object store, the folder is this worker's download of the commit: the
            # export goes to the store under the commit's own prefix, export.json last.
            store = store_for(runs_root)
            if store is not None and not store.publish_export(
                model_dir.name, source_commit, model_dir / EXPORT_DIR
            ):
                return "superseded", None
        return "exported", manifest.served_graph
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # a run may be staging there too
            staging_root.rmdir()


def _served_graph(model_dir: Path) -> str | None:
    manifest = read_manifest(model_dir)
    return manifest.served_graph if manifest is not None else None


def _finished(
    output: BertExportOutput, outcome: str, graph: str | None = None, seconds: float = 0.0
) -> BertExportOutput:
    log.info(f"export.{outcome}", run_id=output.exported_run_id, graph=graph, seconds=seconds)
    return output.model_copy(
        update={"outcome": outcome, "served_graph": graph, "export_seconds": seconds}
    )


def _remove_stale_staging(staging_root: Path, run_id: str) -> None:
    now = time.time()
    for leftover in staging_root.glob(f"{run_id}.export-*"):
        try:
            if now - leftover.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


class ExportActivities:
    """Registered by trainers (the controller role has no export tools to run)."""

    def __init__(self, runs_root: Path) -> None:
        self._runs_root = runs_root

    @activity.defn(name=EXPORT_ACTIVITY)
    async def export_run(self, request: BertExportInput) -> BertExportOutput:
        """The export runs on a thread; this coroutine heartbeats until it ends. A cancel
        (or a lost heartbeat) cannot stop ``torch.onnx.export`` midway, but it stops the
        result from being published."""
        abandoned = threading.Event()
        with activity_scope(ExportRecorder(), "export", run_id=request.run_id) as outcome:
            # The thread gets a copy of this context: its log lines carry the run id too.
            work = asyncio.ensure_future(
                asyncio.to_thread(export_run, self._runs_root, request.run_id, abandoned)
            )
            try:
                while True:
                    done, _ = await asyncio.wait({work}, timeout=HEARTBEAT_SECONDS)
                    if done:
                        result = work.result()
                        outcome.label = result.outcome
                        return result
                    activity.heartbeat()
            except asyncio.CancelledError:
                abandoned.set()
                raise
