"""Stage and swap: a commit replaces a run's files in one step, as readers see it.

A run stays complete and served while it is overwritten: the new attempt trains beside it
(its checkpoints in ``checkpoints/``, its claim in ``.owner.json``, neither part of a
commit), and its commit stages the new model files and the new ``run.json`` in
``$BERT_RUNS_DIR/.staging/{run_id}.attempt-{n}``. Then, under the run's lock
(``fencing.run_lock``), ``install``:

1. writes the journal ``.swap.json`` (``shared.runs.SWAP_MARKER``) into the run folder:
   from here on, readers know files are moving;
2. moves the old commit's files (model, tokenizer, ``onnx/``, ...) into a retired folder
   beside the staged one;
3. moves the new files in;
4. renames the staged ``run.json`` over the old one: the new commit exists from here;
5. removes the journal.

A reader that loads a run's files (the inferencer) does so through
``shared.runs.read_committed``, which reads again whenever the journal was present or
``run.json`` changed during its read: it never keeps a mix of two commits. Readers of
``run.json`` alone see the old record or the new one, never none.

Every step is a rename, done only if not done yet, so a swap cut off midway (a crash, a
lost volume) is finished by the next writer under the lock (``finish_interrupted``): it
rolls forward to the new commit, or back to the old one when the staged files are gone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from shared.logging import get_logger
from shared.runs import (
    RUN_MANIFEST,
    SWAP_MARKER,
    commit_digest,
    fsync_dir,
    is_complete,
    write_json_atomic,
)

log = get_logger(__name__)

RETIRED_SUFFIX = ".retired"
_RETIRE, _INSTALL = "retire", "install"


def install(run_dir: Path, staged: Path, keep: Collection[str]) -> Path:
    """Replace the run's committed files with those in ``staged`` (which holds the new
    ``run.json``); entries named in ``keep`` (training bookkeeping) stay. Call under the
    run's lock. Returns the folder the old files went to: delete it after the lock."""
    retired = staged.with_name(staged.name + RETIRED_SUFFIX)
    shutil.rmtree(retired, ignore_errors=True)
    if staged.parent.parent.resolve() != run_dir.parent.resolve():
        raise ValueError(f"{staged} is not a staging folder of {run_dir.parent}")
    journal = {
        # Relative to the runs root, which may be mounted elsewhere on another node.
        "staged": f"{staged.parent.name}/{staged.name}",
        "retired": f"{retired.parent.name}/{retired.name}",
        "phase": _RETIRE,
        "replaces": commit_digest(run_dir) if is_complete(run_dir) else None,
        "keep": sorted(keep),
    }
    write_json_atomic(run_dir / SWAP_MARKER, journal)
    _finish(run_dir, journal)
    return retired


def pending_staging(run_dir: Path) -> Path | None:
    """The staged folder an unfinished swap of ``run_dir`` still needs, if any."""
    journal = _journal(run_dir)
    return run_dir.parent / journal["staged"] if journal else None


def finish_interrupted(run_dir: Path) -> Path | None:
    """Finish a swap that was cut off (call under the run's lock); the retired folder to
    delete afterwards, or None when there was nothing to finish."""
    if not (run_dir / SWAP_MARKER).exists():
        return None
    journal = _journal(run_dir)
    if journal is None:  # unreadable: nothing to finish; the folder holds what it holds
        (run_dir / SWAP_MARKER).unlink(missing_ok=True)
        return None
    log.warning("run.swap_interrupted", run_id=run_dir.name, phase=journal["phase"])
    _finish(run_dir, journal)
    return run_dir.parent / journal["retired"]


def _journal(run_dir: Path) -> dict[str, Any] | None:
    try:
        journal = json.loads((run_dir / SWAP_MARKER).read_text(encoding="utf-8"))
        root = run_dir.parent.resolve()
        for key in ("staged", "retired"):
            # Our own file, but a path in it must never lead out of the runs root.
            if (root / journal[key]).resolve().parent.parent != root:
                raise ValueError(f"{key} outside the runs root")
        if journal["phase"] not in (_RETIRE, _INSTALL):
            raise ValueError("unknown phase")
        return dict(journal)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finish(run_dir: Path, journal: dict[str, Any]) -> None:
    root = run_dir.parent
    staged, retired = root / journal["staged"], root / journal["retired"]
    stays = {*journal.get("keep", ()), RUN_MANIFEST, SWAP_MARKER}
    staged_record = staged / RUN_MANIFEST
    if journal["phase"] == _RETIRE:
        if not staged_record.is_file():  # nothing to install: the old commit stays
            _roll_back(run_dir, retired, stays, installed=False)
            _end(run_dir)
            return
        retired.mkdir(parents=True, exist_ok=True)
        for entry in list(run_dir.iterdir()):
            if entry.name not in stays and not entry.name.startswith(f".{RUN_MANIFEST}."):
                entry.replace(retired / entry.name)
        journal = {**journal, "phase": _INSTALL}
        write_json_atomic(run_dir / SWAP_MARKER, journal)
    if staged_record.is_file():
        for entry in list(staged.iterdir()):
            if entry.name != RUN_MANIFEST:
                _replace(entry, run_dir / entry.name)
        os.replace(staged_record, run_dir / RUN_MANIFEST)
    elif is_complete(run_dir) and commit_digest(run_dir) == journal.get("replaces"):
        _roll_back(run_dir, retired, stays, installed=True)
    _end(run_dir)


def _roll_back(run_dir: Path, retired: Path, stays: set[str], installed: bool) -> None:
    """The staged files are gone before ``run.json`` was replaced: the old commit returns
    (``installed``: the files in the folder are new ones, moved in before the cut)."""
    log.warning("run.swap_rolled_back", run_id=run_dir.name)
    if installed:
        for entry in list(run_dir.iterdir()):
            if entry.name not in stays and not entry.name.startswith(f".{RUN_MANIFEST}."):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if retired.is_dir():
        for entry in list(retired.iterdir()):
            _replace(entry, run_dir / entry.name)


def _replace(entry: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif entry.is_dir() and (target.exists() or target.is_symlink()):
        target.unlink()
    entry.replace(target)


def _end(run_dir: Path) -> None:
    fsync_dir(run_dir)
    (run_dir / SWAP_MARKER).unlink(missing_ok=True)
    fsync_dir(run_dir)
