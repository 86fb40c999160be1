"""Sealed checkpoints go to the runs store in the background, so training never waits on it.

With an object store (``BERT_RUNS_URI``) the trainer seals checkpoints in its private folder
as always (``checkpoints.py``); each sealed checkpoint is then hard-linked into a snapshot
(instant, and immune to the Trainer pruning the original meanwhile) and uploaded on a helper
thread, its manifest last. One upload runs at a time; a newer checkpoint sealed while one is
pending replaces it (only the newest matters for a resume). Training time is never spent on
the upload, so the checkpoint policy's cost budget (5% of training time) still measures only
the local save. Another trainer that picks the run up downloads the newest sealed checkpoint
from the store before it looks for one to resume from (``RunDirectory.resume_checkpoint``).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from shared.logging import get_logger

log = get_logger(__name__)


class CheckpointUploads:
    """One helper thread uploading the newest sealed checkpoint's snapshot."""

    def __init__(
        self, upload: Callable[[str, Path, Callable[[], bool]], None], snapshots: Path
    ) -> None:
        """``upload(relative, folder, wanted)``: upload the folder, its manifest last, and
        only while ``wanted()``."""
        self._upload = upload
        self._snapshots = snapshots
        self._condition = threading.Condition()
        self._pending: tuple[str, Path] | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, relative: str, checkpoint: Path) -> None:
        """Upload ``checkpoint`` (a sealed folder) as ``relative`` in the background."""
        snapshot = self._snapshots / relative.replace("/", ".")
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(checkpoint, snapshot, copy_function=os.link)
        with self._condition:
            if self._closed:
                shutil.rmtree(snapshot, ignore_errors=True)
                return
            if self._pending is not None:
                shutil.rmtree(self._pending[1], ignore_errors=True)
            self._pending = (relative, snapshot)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="checkpoint-upload", daemon=True
                )
                self._thread.start()
            self._condition.notify_all()

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._pending is None and not self._closed:
                    self._condition.wait()
                if self._pending is None:
                    return
                relative, snapshot = self._pending
                self._pending, self._busy = None, True
            try:
                self._upload(relative, snapshot, self._wanted)
            except Exception as err:  # the next checkpoint is uploaded anyway
                log.warning("checkpoint.upload_failed", checkpoint=relative, error=str(err)[:300])
            finally:
                shutil.rmtree(snapshot, ignore_errors=True)
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _wanted(self) -> bool:
        with self._condition:
            return not self._closed

    def flush(self) -> None:
        """Wait until every submitted checkpoint is uploaded (or failed)."""
        with self._condition:
            while self._pending is not None or self._busy:
                self._condition.wait()

    def close(self) -> None:
        """Drop what is pending; an upload in progress is not sealed (the run committed, or
        the attempt ends: its checkpoints are no longer needed, or the next attempt takes
        the newest one sealed in the store). Never waits for an upload."""
        with self._condition:
            self._closed = True
            if self._pending is not None:
                shutil.rmtree(self._pending[1], ignore_errors=True)
                self._pending = None
            self._condition.notify_all()
