"""The runs directory: containment checks, completion marker and atomic writes.

A run directory is complete when its ``run.json`` exists; that file is always written last,
atomically (temporary sibling, fsync, rename), so readers see a finished run or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from shared.errors import INVALID_CONFIG, RUN_NOT_FOUND, failure
from shared.types import is_safe_run_id

RUN_MANIFEST = "run.json"
CHECKPOINTS_DIR = "checkpoints"


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


def read_manifest(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / RUN_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise failure(
            RUN_NOT_FOUND, f"run {run_dir.name!r} has an unreadable {RUN_MANIFEST}: {err}"
        ) from None


def require_complete_run(runs_root: Path, run_id: str) -> Path:
    run_dir = resolve_run_dir(runs_root, run_id)
    if not run_dir.is_dir():
        raise failure(
            RUN_NOT_FOUND,
            f"run {run_id!r} does not exist in BERT_RUNS_DIR ({runs_root}); "
            "list saved runs with `bert-finetune runs`",
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


def list_runs(runs_root: Path) -> list[dict[str, Any]]:
    """Every run directory under the root with its state and, when complete, its manifest."""
    if not runs_root.is_dir():
        return []
    runs = []
    for entry in sorted(runs_root.iterdir()):
        # ``_aliases`` and other names that cannot be run ids are not runs.
        if not is_safe_run_id(entry.name) or not entry.is_dir():
            continue
        complete = is_complete(entry)
        manifest: dict[str, Any] = {}
        if complete:
            try:
                manifest = json.loads((entry / RUN_MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                complete = False
        runs.append({"run_id": entry.name, "complete": complete, "manifest": manifest})
    return runs
