"""The run fence on real files, with a second real process holding the lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.trainer.run_folder.fencing import (
    AttemptToken,
    RunFence,
    Superseded,
    holder,
    replaced_commit,
)
from shared.runs import RUN_MANIFEST, commit_digest, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]


def _token(attempt: int, run: str = "run-a") -> AttemptToken:
    return AttemptToken("workflow", run, attempt)


def test_a_newer_attempt_fences_the_older_one_off(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    older, newer = RunFence(run_dir, _token(1)), RunFence(run_dir, _token(2))
    older.claim()
    with older.exclusive():
        pass
    newer.claim()
    assert holder(run_dir) == _token(2)
    with pytest.raises(Superseded), older.exclusive():
        pytest.fail("the older attempt got to write")
    assert not older.still_current(force=True)
    with pytest.raises(Superseded):
        older.claim()  # and it cannot take the folder back
    with newer.exclusive():
        pass


def test_a_complete_run_is_only_replaced_by_an_explicit_overwrite(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = RunFence(run_dir, _token(1))
    first.claim()
    with first.exclusive():
        write_json_atomic(run_dir / RUN_MANIFEST, {"attempt": 1})
    with pytest.raises(Superseded), first.exclusive():
        pytest.fail("wrote into a complete run")
    prepared: list[Path] = []
    # A later attempt without the right to replace it (no overwrite) may not...
    with pytest.raises(Superseded):
        RunFence(run_dir, _token(2)).claim()
    with pytest.raises(Superseded):
        RunFence(run_dir, _token(1, run="run-b")).claim()
    assert holder(run_dir) == _token(1)
    # ...with it, the folder is its own while the finished run stays in place (served until
    # the overwrite's commit swaps it), and only while it still holds that very commit.
    overwrite = RunFence(run_dir, _token(1, run="run-b"))
    overwrite.claim(replace_finished_run=lambda: prepared.append(run_dir))
    assert prepared == [run_dir] and holder(run_dir) == _token(1, run="run-b")
    assert overwrite.replaces == commit_digest(run_dir) == replaced_commit(run_dir)
    assert (run_dir / RUN_MANIFEST).is_file()
    with overwrite.exclusive():
        write_json_atomic(run_dir / RUN_MANIFEST, {"attempt": 1, "run": "run-b"})  # its commit
    with pytest.raises(Superseded), overwrite.exclusive():
        pytest.fail("wrote into the run it had already committed")


def test_the_lock_excludes_another_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    hold_seconds = 3.0
    holder_process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from services.trainer.run_folder.fencing import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True); time.sleep(float(sys.argv[2]))\n",
            str(run_dir),
            str(hold_seconds),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder_process.stdout is not None
        assert holder_process.stdout.readline().strip() == "locked"
        began = time.monotonic()
        RunFence(run_dir, _token(1)).claim()
        waited = time.monotonic() - began
    finally:
        holder_process.wait(timeout=30)
    assert waited > hold_seconds / 2, (
        f"claimed after {waited:.2f}s while another process held the lock"
    )
