"""The runs directory: containment checks, completion marker, run records and atomic writes.

A run directory is complete when its ``run.json`` (a ``RunRecord``) exists; that file is
always written last, atomically (temporary sibling, fsync, rename), so readers see a
finished run or none. Names that start with ``_`` (``_aliases``) or ``.`` (staging, owner
files) belong to the runs root itself and are never runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from shared.errors import INVALID_CONFIG, RUN_NOT_FOUND, failure
from shared.file_cache import StampCache
from shared.run_record import RunRecord
from shared.storage import store_for
from shared.types import is_safe_run_id

T = TypeVar("T")

RUN_MANIFEST = "run.json"
CHECKPOINTS_DIR = "checkpoints"
# The confusion matrix of the run's final evaluation, next to the model (runs committed
# before it moved out of ``run.json`` keep it there; ``read_confusion_matrix`` reads both).
CONFUSION_MATRIX_FILE = "confusion_matrix.json"
# Records and commit digests, parsed once per version of each ``run.json``.
_RECORDS = StampCache()
# Present in a complete run's folder while an overwrite swaps its files for the new
# commit's (under the run's lock); ``run.json`` is replaced last, then the marker goes.
SWAP_MARKER = ".swap.json"
# How long a reader waits for a swap in progress (a few renames) before giving up.
SWAP_WAIT_SECONDS = 10.0
_SWAP_POLL_SECONDS = 0.02


def resolve_run_dir(runs_root: Path, run_id: str) -> Path:
    """``runs_root/run_id``, refusing anything that resolves outside ``runs_root``.

    Symlinks are followed before the check, so a link inside the root that points
    elsewhere is refused too.
    """
    if not is_safe_run_id(run_id):
        raise failure(
            INVALID_CONFIG,
            f"run_id {run_id[:100]!r} is not a valid run id: use one path component of "
            "[A-Za-z0-9._-] that starts with a letter or digit (names starting with '_' "
            "or '.' belong to the runs directory itself)",
        )
    root = runs_root.resolve()
    resolved = (root / run_id).resolve()
    if resolved.parent != root:
        raise failure(
            INVALID_CONFIG,
            f"run_id {run_id!r} resolves outside BERT_RUNS_DIR; symlinks out of the runs "
            "directory are refused",
        )
    return resolved


def is_complete(run_dir: Path) -> bool:
    return (run_dir / RUN_MANIFEST).is_file()


def read_record(run_dir: Path) -> RunRecord:
    """The run's ``RunRecord``; ``RunNotFound`` when ``run.json`` is missing or unreadable.

    Parsed once per version of the file (``shared.file_cache``): the record returned is
    shared, never change it."""
    try:
        return _RECORDS.read("record", run_dir / RUN_MANIFEST, RunRecord.from_json)
    except FileNotFoundError:
        raise failure(RUN_NOT_FOUND, f"run {run_dir.name!r} has no {RUN_MANIFEST}") from None
    except (OSError, ValueError) as err:
        raise failure(
            RUN_NOT_FOUND,
            f"run {run_dir.name!r} has an unreadable {RUN_MANIFEST} ({_reason(err)}); it may "
            "have been written by a newer version (upgrade this worker) or be damaged (replace "
            "it: train it again with overwrite: true)",
        ) from None


def _reason(err: Exception) -> str:
    return err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err)


def unreadable_reason(run_dir: Path) -> str | None:
    """Why a complete run's ``run.json`` cannot be read; None when it can (or is absent)."""
    try:
        RunRecord.from_json((run_dir / RUN_MANIFEST).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return _reason(err)
    return None


def swap_pending(run_dir: Path) -> bool:
    """Whether an overwrite is swapping the run's files (or was cut off while it did)."""
    return (run_dir / SWAP_MARKER).exists()


def _commit_stamp(run_dir: Path) -> str | None:
    """The commit in place now (the digest of ``run.json``: an inode and a timestamp may
    come back for the next commit); None while files are being swapped, or incomplete."""
    if swap_pending(run_dir):
        return None
    try:
        digest = file_sha256(run_dir / RUN_MANIFEST)  # not cached by stamp: read it now
    except FileNotFoundError:
        return None
    if swap_pending(run_dir):
        return None
    return digest


def read_committed(
    run_dir: Path, read: Callable[[], T], wait_seconds: float = SWAP_WAIT_SECONDS
) -> T:
    """``read()`` of a complete run's files, all from one commit.

    An overwrite swaps a run's files under the run's lock with ``SWAP_MARKER`` present and
    replaces ``run.json`` last, so a read that began and ended with the same ``run.json``
    and no marker saw one commit only; a read that overlapped a swap is done again once the
    swap is over (a swap is a few renames). ``RunNotFound`` when the run is incomplete, or
    still being swapped after ``wait_seconds``.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        before = _commit_stamp(run_dir)
        if before is None and not swap_pending(run_dir) and not is_complete(run_dir):
            raise failure(
                RUN_NOT_FOUND,
                f"run {run_dir.name!r} was removed or is incomplete (it has no "
                f"{RUN_MANIFEST}); try again when it finishes",
            )
        if before is not None:
            try:
                value = read()
            except Exception:
                if _commit_stamp(run_dir) == before:
                    raise  # a real error, not a swap under the read
            else:
                if _commit_stamp(run_dir) == before:
                    return value
        if time.monotonic() > deadline:
            raise failure(
                RUN_NOT_FOUND,
                f"run {run_dir.name!r} is being replaced by an overwrite; try again in a moment",
            )
        time.sleep(_SWAP_POLL_SECONDS)


def write_record(run_dir: Path, record: RunRecord) -> None:
    """Mark the run complete: ``run.json`` is written atomically and always last."""
    write_json_atomic(run_dir / RUN_MANIFEST, json.loads(record.model_dump_json()))


def commit_digest(run_dir: Path) -> str:
    """Identifies one commit of a run: any rewrite of its ``run.json`` changes it (computed
    once per version of the file, like ``read_record``)."""
    return _RECORDS.read(
        "digest", run_dir / RUN_MANIFEST, lambda content: hashlib.sha256(content).hexdigest()
    )


def require_complete_run(runs_root: Path, run_id: str) -> Path:
    run_dir = resolve_run_dir(runs_root, run_id)
    where = f"BERT_RUNS_DIR ({runs_root})"
    if (store := store_for(runs_root)) is not None:
        # The store is the truth: its run.json (or its absence) is mirrored here first.
        store.sync_records(runs_root, [run_id])
        where = f"BERT_RUNS_URI ({store.uri})"
    if not run_dir.is_dir():
        raise failure(
            RUN_NOT_FOUND,
            f"run {run_id!r} does not exist in {where}; list saved runs with `bert-finetune runs`",
        )
    if not is_complete(run_dir):
        raise failure(
            RUN_NOT_FOUND,
            f"run {run_id!r} is incomplete (training is still running, failed or was "
            f"cancelled: it has no {RUN_MANIFEST}); wait for it to finish or train it again",
        )
    return run_dir


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary sibling, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunEntry:
    """One folder of the runs root: complete with its record, or partial."""

    run_id: str
    record: RunRecord | None
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return self.record is not None


def list_runs(runs_root: Path) -> list[RunEntry]:
    """Every run folder under the root with its record when complete (not ``_``/``.`` names);
    with an object store, every run of the store (mirrored into the local root first)."""
    if (store := store_for(runs_root)) is not None:
        store.sync_records(runs_root)
    if not runs_root.is_dir():
        return []
    runs = []
    for entry in sorted(runs_root.iterdir()):
        # ``_aliases`` and other names that cannot be run ids are not runs.
        if not is_safe_run_id(entry.name) or not entry.is_dir():
            continue
        if not is_complete(entry):
            runs.append(RunEntry(entry.name, None))
            continue
        try:
            runs.append(RunEntry(entry.name, read_record(entry)))
        except Exception as err:  # one damaged folder must not hide the others
            runs.append(RunEntry(entry.name, None, str(getattr(err, "message", err))))
    return runs


@dataclass(frozen=True)
class ServedRun:
    """What serves a run id: the folder holding the model files and the run's own record."""

    run_id: str
    model_dir: Path
    record: RunRecord


def resolve_served_run(
    runs_root: Path, run_id: str, weights: bool = True, download: bool = True
) -> ServedRun:
    """The folder whose model serves ``run_id``: its own, or, for a run that reused another
    run's model, the source's, provided the source still holds the very commit reused.

    With an object store it is the commit downloaded into the local cache (``weights``
    False: only its JSON files, for callers that read metadata; ``download`` False:
    ``NotDownloaded`` rather than wait for a download: ``shared.storage.served``).
    """
    if (store := store_for(runs_root)) is not None:
        from shared.storage.served import served_run

        return served_run(store, runs_root, run_id, weights, download)
    run_dir = require_complete_run(runs_root, run_id)
    record = read_record(run_dir)
    if record.reused_from is None or record.reused_from == run_id:
        return ServedRun(run_id, run_dir, record)
    source_dir = resolve_run_dir(runs_root, record.reused_from)
    if not is_complete(source_dir) or commit_digest(source_dir) != record.source_commit:
        raise failure(
            RUN_NOT_FOUND,
            f"run {run_id!r} reused the model of run {record.reused_from!r}, which has since "
            "been removed, retrained or overwritten; train this run again (overwrite: true)",
        )
    return ServedRun(run_id, source_dir, record)


def write_confusion_matrix(folder: Path, label_names: list[str], matrix: list[list[int]]) -> None:
    """The final evaluation's confusion matrix in its own file (rows: true label, columns:
    predicted, in ``label_names`` order), so ``run.json`` stays small whatever the classes."""
    (folder / CONFUSION_MATRIX_FILE).write_text(
        json.dumps({"label_names": label_names, "matrix": matrix}), encoding="utf-8"
    )


def read_confusion_matrix(run_dir: Path, record: RunRecord) -> list[list[int]] | None:
    """The run's confusion matrix: from ``run.json`` (runs committed before it had a file
    of its own), else from ``confusion_matrix.json`` next to the model (for a run that
    reuses another run's model, that run's, while it holds the commit reused); None when
    there is none."""
    if record.confusion_matrix is not None:
        return record.confusion_matrix
    folder = run_dir
    if record.reused_from is not None and record.reused_from != record.run_id:
        folder = run_dir.parent / record.reused_from
        try:
            if commit_digest(folder) != record.source_commit:
                return None
        except OSError:
            return None
    try:
        matrix = json.loads((folder / CONFUSION_MATRIX_FILE).read_text(encoding="utf-8"))
        matrix = matrix["matrix"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    valid = isinstance(matrix, list) and all(
        isinstance(row, list) and all(isinstance(n, int) for n in row) for row in matrix
    )
    return matrix if valid else None
