"""Resumable checkpoints: verified manifests, per-attempt folders, newest-valid lookup.

Layout: ``{run_dir}/checkpoints/attempt-{n}/checkpoint-{step}/``. Each attempt writes only
into its own folder, so a stale attempt that is still running somewhere can never
overwrite the checkpoints of a newer one. A checkpoint counts only once its manifest
(sizes and SHA-256 of every file, written atomically after the Trainer has finished writing)
verifies.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from shared.logging import get_logger
from shared.manifests import CheckpointFile, CheckpointManifest, ManifestError
from shared.runs import CHECKPOINTS_DIR, file_sha256

log = get_logger(__name__)

MANIFEST_NAME = "bert_finetune_checkpoint.json"
KEEP_PER_ATTEMPT = 2
# The default policy (no checkpoint_steps in the config): a checkpoint at most this often,
# and never so often that saving takes more than MAX_COST_FRACTION of the training time.
DEFAULT_INTERVAL_SECONDS = 600.0
MAX_COST_FRACTION = 0.05
_ATTEMPT_DIR = re.compile(r"^attempt-(\d+)$")
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    attempt: int


def attempt_dir(run_dir: Path, attempt: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"attempt-{attempt}"


def checkpoint_dir(run_dir: Path, attempt: int, step: int) -> Path:
    """Where the Trainer saves the checkpoint of ``step`` (its ``checkpoint-{step}`` naming)."""
    return attempt_dir(run_dir, attempt) / f"checkpoint-{step}"


def _files(checkpoint: Path) -> list[Path]:
    return sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(checkpoint: Path, step: int, attempt: int, config_digest: str) -> None:
    """Seal a checkpoint the Trainer has finished writing."""
    files = {
        str(p.relative_to(checkpoint)): CheckpointFile(size=p.stat().st_size, sha256=file_sha256(p))
        for p in _files(checkpoint)
    }
    manifest = CheckpointManifest(
        step=step, attempt=attempt, config_digest=config_digest, files=files
    )
    manifest.write(checkpoint / MANIFEST_NAME)


def verify(checkpoint: Path, config_digests: Collection[str]) -> Checkpoint | None:
    """The checkpoint if it was sealed for one of ``config_digests`` (this run's identity, in
    the current and earlier digest formats) and its manifest matches every file."""
    try:
        manifest = CheckpointManifest.read(checkpoint / MANIFEST_NAME)
        files = manifest.files
        if manifest.config_digest not in config_digests or "trainer_state.json" not in files:
            return None
        for name, expected in files.items():
            path = checkpoint / name
            if path.stat().st_size != expected.size or file_sha256(path) != expected.sha256:
                log.warning("checkpoint.corrupt", checkpoint=str(checkpoint), file=name)
                return None
        return Checkpoint(path=checkpoint, step=manifest.step, attempt=manifest.attempt)
    except (OSError, ManifestError):
        # Missing, damaged or from a newer release: not a checkpoint to resume from.
        return None


def _candidates(run_dir: Path) -> list[tuple[int, int, Path]]:
    root = run_dir / CHECKPOINTS_DIR
    found: list[tuple[int, int, Path]] = []
    if not root.is_dir():
        return found
    for attempt in root.iterdir():
        attempt_match = _ATTEMPT_DIR.match(attempt.name)
        if not attempt_match or not attempt.is_dir():
            continue
        for checkpoint in attempt.iterdir():
            step_match = _CHECKPOINT_DIR.match(checkpoint.name)
            if step_match and checkpoint.is_dir():
                found.append((int(step_match.group(1)), int(attempt_match.group(1)), checkpoint))
    return sorted(found, reverse=True)


def sealed_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints whose manifest has been written (not yet verified), newest first."""
    return [
        path for _step, _attempt, path in _candidates(run_dir) if (path / MANIFEST_NAME).is_file()
    ]


def read_seal(checkpoint: Path) -> Checkpoint | None:
    """What a sealed checkpoint's manifest says (its step and attempt), without verifying
    its files; None when it has no readable manifest."""
    try:
        manifest = CheckpointManifest.read(checkpoint / MANIFEST_NAME)
    except (OSError, ManifestError):
        return None
    return Checkpoint(path=checkpoint, step=manifest.step, attempt=manifest.attempt)


def find_resume_checkpoint(
    run_dir: Path, hint: str | None, config_digests: Collection[str]
) -> Checkpoint | None:
    """The newest checkpoint that verifies: the heartbeat's hint first, then a folder scan."""
    checkpoints_root = (run_dir / CHECKPOINTS_DIR).resolve()
    if hint:
        hinted = Path(hint).resolve()
        # The hint comes from heartbeat details; only trust paths inside this run's folder.
        if hinted.is_relative_to(checkpoints_root):
            checkpoint = verify(hinted, config_digests)
            newest = _candidates(run_dir)
            if checkpoint and (not newest or newest[0][0] <= checkpoint.step):
                return checkpoint
    for _step, _attempt, path in _candidates(run_dir):
        checkpoint = verify(path, config_digests)
        if checkpoint:
            return checkpoint
    return None


def prune(run_dir: Path, current_attempt: int, keep: int = KEEP_PER_ATTEMPT) -> None:
    """Keep the newest ``keep`` checkpoints of this attempt; drop older attempts' folders.

    Called only after this attempt has sealed a checkpoint, so the newest verified state
    always survives.
    """
    try:
        mine = attempt_dir(run_dir, current_attempt)
        own = sorted(
            (int(m.group(1)), p)
            for p in mine.iterdir()
            if (m := _CHECKPOINT_DIR.match(p.name)) and p.is_dir()
        )
        for _step, path in own[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
        for other in (run_dir / CHECKPOINTS_DIR).iterdir():
            match = _ATTEMPT_DIR.match(other.name)
            if match and int(match.group(1)) < current_attempt:
                shutil.rmtree(other, ignore_errors=True)
    except FileNotFoundError:
        # The folder went away under us (the run was cancelled or finished elsewhere):
        # pruning is housekeeping and must never fail the attempt.
        log.warning("checkpoint.prune_skipped", run_dir=str(run_dir))
