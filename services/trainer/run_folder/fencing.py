"""Fencing: only the newest attempt of a run may write into its run directory.

A trainer cut off from Temporal keeps training while the server, missing its heartbeats,
starts the next attempt elsewhere. Both then write into the same ``{run_id}`` folder. Each
attempt therefore claims the folder with its token (workflow id, workflow run id, attempt
number) in ``$BERT_RUNS_DIR/.fences/{run_id}.json`` before it writes anything, and performs
every write that other attempts can see (sealing or pruning checkpoints, the final save,
``run.json``) inside ``exclusive()``, which holds the run's lock and refuses unless the
folder is still its own and not yet complete (an overwrite: still holding the commit it
replaces, which stays served until the overwrite's commit swaps it: ``swap.py``). The fence
lives beside the run folders (a name no run id can take), so run folders hold only what was
trained. An older attempt can thus never overwrite or delete a newer one's work, and a
finished run's files are never modified except through an explicit overwrite, which claims
the folder like any attempt.
(The ONNX export adds ``onnx/`` to a finished run under the same lock, only while the run
still holds the commit it was built from: ``export.py``.)

The lock is a POSIX record lock (``fcntl.lockf``) on ``.fences/{run_id}.lock``: it works
across machines on network file systems with lock support (NFSv4, CephFS, EFS, Filestore),
and a process-wide mutex covers attempts in the same process (POSIX locks do not).
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.logging import get_logger
from shared.manifests import FenceRecord, ManifestError
from shared.runs import commit_digest, is_complete

log = get_logger(__name__)

FENCES_DIR = ".fences"
# How often ``still_current`` rereads the fence between writes (a file read per check).
RECHECK_SECONDS = 5.0

_process_locks: dict[Path, threading.Lock] = {}
_process_locks_guard = threading.Lock()


class Superseded(Exception):
    """A newer attempt owns the run directory (or the run finished): stop, write nothing."""


@dataclass(frozen=True)
class AttemptToken:
    """Identifies one attempt; attempts of the same workflow run are ordered by number."""

    workflow_id: str
    workflow_run_id: str
    attempt: int

    def same_workflow_run(self, other: AttemptToken) -> bool:
        return (self.workflow_id, self.workflow_run_id) == (
            other.workflow_id,
            other.workflow_run_id,
        )


def _fence_path(run_dir: Path, suffix: str) -> Path:
    """``{runs_root}/.fences/{run_id}{suffix}`` (run folders sit directly in the runs root)."""
    return run_dir.parent / FENCES_DIR / f"{run_dir.name}{suffix}"


def _process_lock(run_dir: Path) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(run_dir.resolve(), threading.Lock())


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """The run directory's lock, across threads, processes and machines."""
    lock_file = _fence_path(run_dir, ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with _process_lock(run_dir), lock_file.open("a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _commit_now(run_dir: Path) -> str | None:
    """The commit the folder holds (the digest of its ``run.json``); None: incomplete."""
    try:
        return commit_digest(run_dir) if is_complete(run_dir) else None
    except FileNotFoundError:
        return None


def replaced_commit(run_dir: Path) -> str | None:
    """The commit the attempt that last claimed ``run_dir`` set out to replace, if any."""
    try:
        return FenceRecord.read(_fence_path(run_dir, ".json")).replaces
    except (OSError, ManifestError):
        return None


def release(run_dir: Path) -> None:
    """Drop the claim (an abandoned overwrite; call under the run's lock): whichever
    attempt held it writes nothing more, and the next claim takes the folder afresh."""
    _fence_path(run_dir, ".json").unlink(missing_ok=True)


def holder(run_dir: Path) -> AttemptToken | None:
    """The attempt that last claimed ``run_dir``; None when none did or the fence file is
    unreadable (the next claim then rewrites it)."""
    try:
        record = FenceRecord.read(_fence_path(run_dir, ".json"))
    except (OSError, ManifestError):
        return None
    return AttemptToken(record.workflow_id, record.workflow_run_id, record.attempt)


class RunFence:
    """One attempt's claim on a run directory."""

    def __init__(self, run_dir: Path, token: AttemptToken) -> None:
        self.run_dir = run_dir
        self.token = token
        self._checked_at = 0.0
        self._current = False
        # The commit this attempt replaces (an overwrite); None: the run must stay incomplete.
        self.replaces: str | None = None

    def claim(self, replace_finished_run: Callable[[], None] | None = None) -> None:
        """Take the folder for this attempt before writing anything into it.

        Raises ``Superseded`` when a newer attempt of the same workflow run holds it, or
        when the run is complete and ``replace_finished_run`` is None (it may not be
        replaced). Otherwise the complete run stays in place, served, until this attempt's
        commit swaps it (``swap.py``): ``replace_finished_run()`` runs under the lock, and
        the fence remembers the commit it replaces (``replaces``), so this attempt may write
        only while the folder still holds that very commit. A different workflow run
        holding the folder is taken over: the owner check lets a workflow take a folder
        only from one that is no longer running.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(self.run_dir):
            current = holder(self.run_dir)
            same_run = current is not None and current.same_workflow_run(self.token)
            if same_run and current is not None and current.attempt > self.token.attempt:
                raise Superseded(
                    f"attempt {current.attempt} already owns the run (this is attempt "
                    f"{self.token.attempt})"
                )
            if is_complete(self.run_dir):
                if replace_finished_run is None:
                    raise Superseded("the run is already complete")
                replace_finished_run()
            self.replaces = _commit_now(self.run_dir)
            if current is not None and current != self.token:
                log.info("fence.taken_over", previous=asdict(current))
            FenceRecord(**asdict(self.token), replaces=self.replaces).write(
                _fence_path(self.run_dir, ".json")
            )
        self._current = True
        self._checked_at = time.monotonic()
        log.info("fence.claimed", attempt=self.token.attempt)

    def _verify(self) -> None:
        current = holder(self.run_dir)
        if current != self.token:
            owner = f"attempt {current.attempt}" if current else "nobody (the claim is gone)"
            if current and not current.same_workflow_run(self.token):
                owner += f" of workflow {current.workflow_id!r}"
            raise Superseded(f"{owner} owns the run now, not attempt {self.token.attempt}")
        if _commit_now(self.run_dir) not in (None, self.replaces):
            raise Superseded("the run is already complete")

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run's lock while this attempt is still its owner; else ``Superseded``.

        Every write another attempt could see happens inside this block, so a newer attempt
        cannot claim the folder halfway through it.
        """
        with run_lock(self.run_dir):
            try:
                self._verify()
            except Superseded:
                self._current = False
                raise
            yield
        self._checked_at = time.monotonic()

    def still_current(self, force: bool = False) -> bool:
        """Whether this attempt still owns the folder (rechecked every few seconds)."""
        if not self._current:
            return False
        if force or time.monotonic() - self._checked_at >= RECHECK_SECONDS:
            self._checked_at = time.monotonic()
            try:
                self._verify()
            except Superseded:
                self._current = False
        return self._current
