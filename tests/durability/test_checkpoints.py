"""checkpoints.py on real files: sealing, verification, lookup order and pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.trainer.run_folder import checkpoints

DIGEST = "config-a"


def _write_checkpoint(
    run_dir: Path, attempt: int, step: int, digest: str = DIGEST, seal: bool = True
) -> Path:
    """A checkpoint folder shaped like the Trainer's, sealed like the training callback does."""
    path = checkpoints.attempt_dir(run_dir, attempt) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    (path / "optimizer.pt").write_bytes(b"optimizer-state-%d" % step)
    if seal:
        checkpoints.write_manifest(path, step, attempt, digest)
    return path


def test_sealed_checkpoint_verifies(tmp_path: Path) -> None:
    path = _write_checkpoint(tmp_path, attempt=1, step=50)
    found = checkpoints.verify(path, [DIGEST])
    assert found == checkpoints.Checkpoint(path=path, step=50, attempt=1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / "model.safetensors").write_bytes(b"truncated"),
        lambda p: (p / "optimizer.pt").write_bytes(b"optimizer-state-99"),  # same size
        lambda p: (p / "optimizer.pt").unlink(),
        lambda p: (p / checkpoints.MANIFEST_NAME).write_text("{not json"),
        lambda p: (p / checkpoints.MANIFEST_NAME).unlink(),
    ],
    ids=["truncated", "same-size-edit", "missing-file", "bad-manifest", "unsealed"],
)
def test_damaged_checkpoint_is_refused(tmp_path: Path, damage) -> None:  # noqa: ANN001
    path = _write_checkpoint(tmp_path, attempt=1, step=50)
    damage(path)
    assert checkpoints.verify(path, [DIGEST]) is None


def test_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    path = _write_checkpoint(tmp_path, attempt=1, step=50, digest="config-b")
    assert checkpoints.verify(path, [DIGEST]) is None
    assert checkpoints.find_resume_checkpoint(tmp_path, str(path), [DIGEST]) is None


def test_resume_takes_newest_valid_and_skips_corrupt(tmp_path: Path) -> None:
    _write_checkpoint(tmp_path, attempt=1, step=50)
    good = _write_checkpoint(tmp_path, attempt=1, step=100)
    corrupt = _write_checkpoint(tmp_path, attempt=2, step=150)
    (corrupt / "model.safetensors").write_bytes(b"")
    _write_checkpoint(tmp_path, attempt=2, step=200, seal=False)  # killed while saving

    # The heartbeat names the corrupt one; the scan falls back to the newest good one.
    found = checkpoints.find_resume_checkpoint(tmp_path, str(corrupt), [DIGEST])
    assert found is not None and found.path == good


def test_stale_hint_loses_to_a_newer_checkpoint_on_disk(tmp_path: Path) -> None:
    old = _write_checkpoint(tmp_path, attempt=1, step=50)
    newer = _write_checkpoint(tmp_path, attempt=1, step=100)  # sealed after the last heartbeat
    found = checkpoints.find_resume_checkpoint(tmp_path, str(old), [DIGEST])
    assert found is not None and found.path == newer


def test_hint_outside_the_run_is_ignored(tmp_path: Path) -> None:
    elsewhere = _write_checkpoint(tmp_path / "other-run", attempt=1, step=500)
    mine = _write_checkpoint(tmp_path / "run", attempt=1, step=50)
    found = checkpoints.find_resume_checkpoint(tmp_path / "run", str(elsewhere), [DIGEST])
    assert found is not None and found.path == mine


def test_stale_attempt_never_overwrites_newer_attempt(tmp_path: Path) -> None:
    # Attempt 2 resumed and checkpointed; attempt 1 (a zombie on a partitioned node) keeps
    # training and sealing. Each writes only its own folder, and its pruning never reaches
    # a newer attempt's folder.
    newer = _write_checkpoint(tmp_path, attempt=2, step=150)
    newer_manifest = (newer / checkpoints.MANIFEST_NAME).read_bytes()
    stale = _write_checkpoint(tmp_path, attempt=1, step=150)
    checkpoints.prune(tmp_path, current_attempt=1)

    assert stale != newer
    assert (newer / checkpoints.MANIFEST_NAME).read_bytes() == newer_manifest
    assert checkpoints.verify(newer, [DIGEST]) is not None
    # The newer attempt's next prune retires the stale attempt's folder.
    _write_checkpoint(tmp_path, attempt=2, step=200)
    checkpoints.prune(tmp_path, current_attempt=2)
    assert not checkpoints.attempt_dir(tmp_path, 1).exists()


def test_prune_keeps_newest_of_current_attempt(tmp_path: Path) -> None:
    for step in (50, 100, 150, 200):
        _write_checkpoint(tmp_path, attempt=3, step=step)
    _write_checkpoint(tmp_path, attempt=2, step=40)
    checkpoints.prune(tmp_path, current_attempt=3)

    kept = sorted(p.name for p in checkpoints.attempt_dir(tmp_path, 3).iterdir())
    assert kept == ["checkpoint-150", "checkpoint-200"]
    assert not checkpoints.attempt_dir(tmp_path, 2).exists()
    assert checkpoints.sealed_checkpoints(tmp_path) == [
        checkpoints.attempt_dir(tmp_path, 3) / "checkpoint-200",
        checkpoints.attempt_dir(tmp_path, 3) / "checkpoint-150",
    ]


def test_no_checkpoints_means_fresh_start(tmp_path: Path) -> None:
    assert checkpoints.find_resume_checkpoint(tmp_path, None, [DIGEST]) is None
    assert checkpoints.sealed_checkpoints(tmp_path) == []
