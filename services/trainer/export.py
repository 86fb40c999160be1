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
import shutil
import threading
import time
import uuid
from pathlib import Path

from temporalio import activity

from services.trainer.fencing import run_lock
from services.trainer.run_directory import STAGING_DIR
from shared.errors import failure
from shared.export_types import EXPORT_ACTIVITY, EXPORT_FAILED, BertExportInput, BertExportOutput
from shared.logging import get_logger
from shared.onnx_export import (
    OnnxExportError,
    build_export,
    commit_of,
    is_current_export,
    publish_export,
    read_check_texts,
    read_manifest,
)
from shared.runs import commit_digest, resolve_served_run

log = get_logger(__name__)

HEARTBEAT_SECONDS = 5.0
# Staging folders older than this were left by a crashed export: removed by the next one.
STALE_STAGING_SECONDS = 3600.0


def export_run(
    runs_root: Path, run_id: str, abandoned: threading.Event | None = None
) -> BertExportOutput:
    """Export ``run_id``'s model (the reused run's, for a run that reused one).

    ``abandoned`` set (the activity was cancelled or timed out): publish nothing.
    Raises ``RunNotFound`` for a missing or incomplete run and ``ExportFailed`` when the
    graph cannot be built or does not reproduce the model (the run stays served by PyTorch).
    """
    served = resolve_served_run(runs_root, run_id)
    model_dir = served.model_dir
    exported_run_id = model_dir.name
    output = BertExportOutput(run_id=run_id, exported_run_id=exported_run_id)
    if is_current_export(model_dir):
        manifest = read_manifest(model_dir) or {}
        log.info("export.already_exported", run_id=exported_run_id)
        return output.model_copy(
            update={"outcome": "already_exported", "served_graph": manifest.get("served_graph")}
        )
    source_commit = commit_digest(model_dir)
    staging_root = runs_root / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(staging_root, exported_run_id)
    staging = staging_root / f"{exported_run_id}.export-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    started = time.monotonic()
    try:
        try:
            manifest = build_export(
                model_dir, staging, read_check_texts(model_dir), source_commit=source_commit
            )
        except OnnxExportError as err:
            if commit_of(model_dir) != source_commit:
                return _superseded(output, exported_run_id)  # the files changed under us
            log.warning("export.failed", run_id=exported_run_id, error=str(err)[:500])
            raise failure(
                EXPORT_FAILED, f"{err}; run {exported_run_id!r} stays served by PyTorch"
            ) from None
        with run_lock(model_dir):
            if abandoned is not None and abandoned.is_set():
                log.info("export.abandoned", run_id=exported_run_id)
                return output.model_copy(update={"outcome": "abandoned"})
            if commit_of(model_dir) != source_commit:
                return _superseded(output, exported_run_id)
            publish_export(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = round(time.monotonic() - started, 3)
    log.info("export.published", run_id=exported_run_id, graph=manifest["served_graph"])
    return output.model_copy(
        update={"served_graph": manifest["served_graph"], "export_seconds": seconds}
    )


def _superseded(output: BertExportOutput, run_id: str) -> BertExportOutput:
    log.warning("export.superseded", run_id=run_id)
    return output.model_copy(update={"outcome": "superseded"})


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
        work = asyncio.ensure_future(
            asyncio.to_thread(export_run, self._runs_root, request.run_id, abandoned)
        )
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=HEARTBEAT_SECONDS)
                if done:
                    return work.result()
                activity.heartbeat()
        except asyncio.CancelledError:
            abandoned.set()
            raise
