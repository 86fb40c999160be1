"""Which workflow is training a run directory, so two experiments never share one.

Run ids derive from the experiment name, so two workflows started with the same name (for
example with different workflow ids) map to the same ``{run_id}`` folder. The first to
train claims it in ``{run_dir}/.owner.json``; another workflow may take the folder over
only once the owner is no longer running, and only the owner cleans it up on cancel.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from shared.errors import INVALID_CONFIG, failure
from shared.logging import get_logger
from shared.manifests import ManifestError, OwnerRecord

log = get_logger(__name__)

OWNER_FILE = ".owner.json"


def owner_of(run_dir: Path) -> str | None:
    """The owning workflow's id; None when nobody owns the folder or the file is unreadable."""
    try:
        return OwnerRecord.read(run_dir / OWNER_FILE).workflow_id
    except (OSError, ManifestError):
        return None


def claim(run_dir: Path, workflow_id: str, is_running: Callable[[str], bool]) -> None:
    """Make ``workflow_id`` the owner of ``run_dir``, or refuse while another owner runs."""
    record = OwnerRecord(workflow_id=workflow_id, pid=os.getpid())
    try:
        # Exclusive create: of two workflows claiming a new folder at once, one wins.
        record.create(run_dir / OWNER_FILE)
        return
    except FileExistsError:
        pass
    current = owner_of(run_dir)
    if current == workflow_id:
        return
    if current is not None and is_running(current):
        raise failure(
            INVALID_CONFIG,
            f"run {run_dir.name!r} is being trained by workflow {current!r}; wait for it or "
            "cancel it, or use another experiment_name",
        )
    log.info("training.run_taken_over", previous_owner=current)
    record.write(run_dir / OWNER_FILE)


def owned_by(run_dir: Path, workflow_id: str) -> bool:
    """True when ``workflow_id`` may clean up ``run_dir`` (it owns it, or nobody does)."""
    current = owner_of(run_dir)
    return current is None or current == workflow_id
