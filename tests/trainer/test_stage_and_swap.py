"""Stage and swap on real files: a commit replaces a complete run's files in one step.

Readers never see a mix of two commits, and a swap cut off after any of its renames is
finished by the next writer (rolled forward, or back when the staged files are gone).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.trainer.run_folder import swap
from services.trainer.run_folder.fencing import run_lock
from shared.runs import RUN_MANIFEST, SWAP_MARKER, read_committed

KEEP = ("checkpoints", ".owner.json")


def commit_files(folder: Path, generation: str, extra: bool = False) -> None:
    """A commit's files, each naming its generation (``extra``: one more file and a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (folder / name).write_text(generation, encoding="utf-8")
    if extra:
        (folder / "onnx").mkdir(exist_ok=True)
        (folder / "onnx" / "export.json").write_text(generation, encoding="utf-8")
        (folder / "vocab.txt").write_text(generation, encoding="utf-8")
    (folder / RUN_MANIFEST).write_text(json.dumps({"generation": generation}), encoding="utf-8")


def contents(run_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(run_dir)): path.read_text(encoding="utf-8")
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A complete run of generation "old" with an export, while an overwrite trains in it."""
    folder = tmp_path / "runs" / "exp-run-0-m"
    commit_files(folder, "old", extra=True)
    (folder / "checkpoints" / "attempt-1").mkdir(parents=True)
    (folder / "checkpoints" / "attempt-1" / "state").write_text("new-training", encoding="utf-8")
    (folder / ".owner.json").write_text("owner", encoding="utf-8")
    return folder


def stage(run_dir: Path, generation: str) -> Path:
    staged = run_dir.parent / ".staging" / f"{run_dir.name}.attempt-2"
    commit_files(staged, generation)
    return staged


def expected_after_swap() -> dict[str, str]:
    return {
        ".owner.json": "owner",
        "checkpoints/attempt-1/state": "new-training",
        "config.json": "new",
        "model.safetensors": "new",
        RUN_MANIFEST: json.dumps({"generation": "new"}),
        "tokenizer.json": "new",
    }


def test_install_swaps_every_committed_file_and_keeps_the_training_files(run_dir: Path) -> None:
    staged = stage(run_dir, "new")
    with run_lock(run_dir):
        retired = swap.install(run_dir, staged, KEEP)
    # The old export and the old vocabulary went with the old commit: nothing of it is left.
    assert contents(run_dir) == expected_after_swap()
    assert contents(retired) == {
        "config.json": "old",
        "model.safetensors": "old",
        "onnx/export.json": "old",
        "tokenizer.json": "old",
        "vocab.txt": "old",
    }
    assert not staged.exists() or not any(staged.iterdir())
    assert swap.finish_interrupted(run_dir) is None


def _renames(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> list[str]:
    """Make the ``fail_at``-th rename of the swap fail, as if the trainer died there."""
    calls: list[str] = []
    real_replace, real_os_replace = Path.replace, swap.os.replace

    def counted(kind: str, real: Callable[..., Any], *args: Any) -> Any:
        calls.append(kind)
        if len(calls) == fail_at:
            raise OSError("the trainer died here")
        return real(*args)

    monkeypatch.setattr(Path, "replace", lambda self, to: counted("path", real_replace, self, to))
    monkeypatch.setattr(swap.os, "replace", lambda a, b: counted("os", real_os_replace, a, b))
    return calls


def _count_renames(tmp_path: Path) -> int:
    folder = tmp_path / "count" / "runs" / "exp-run-0-m"
    commit_files(folder, "old", extra=True)
    staged = stage(folder, "new")
    calls: list[int] = []
    real_replace, real_os_replace = Path.replace, swap.os.replace
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "replace", lambda s, t: (calls.append(1), real_replace(s, t))[1])
        patch.setattr(swap.os, "replace", lambda a, b: (calls.append(1), real_os_replace(a, b))[1])
        swap.install(folder, staged, KEEP)
    return len(calls)


@pytest.mark.parametrize("fail_at", range(1, 16))
def test_a_swap_cut_off_after_any_rename_is_finished_by_the_next_writer(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    if fail_at > _count_renames(tmp_path):
        pytest.skip("the swap has fewer renames")
    before = contents(run_dir)
    staged = stage(run_dir, "new")
    with monkeypatch.context() as patch:
        _renames(patch, fail_at)
        with pytest.raises(OSError, match="died"), run_lock(run_dir):
            swap.install(run_dir, staged, KEEP)
    started = (run_dir / SWAP_MARKER).exists()
    if started:
        assert swap.pending_staging(run_dir) == staged.resolve()
        # Meanwhile a reader waits for the swap rather than mixing commits, then gives up.
        with pytest.raises(Exception, match="being replaced"):
            read_committed(run_dir, lambda: contents(run_dir), wait_seconds=0.1)
    with run_lock(run_dir):
        swap.finish_interrupted(run_dir)
    # Cut off before its journal was written, the swap never began: the old run is intact.
    assert contents(run_dir) == (expected_after_swap() if started else before)
    assert not (run_dir / SWAP_MARKER).exists()


def test_a_swap_whose_staged_files_are_gone_rolls_back_to_the_old_commit(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = contents(run_dir)
    staged = stage(run_dir, "new")
    with monkeypatch.context() as patch:
        _renames(patch, 7)  # the old files are out, some new ones are in
        with pytest.raises(OSError), run_lock(run_dir):
            swap.install(run_dir, staged, KEEP)
    shutil.rmtree(staged)  # lost with the node's scratch space, say
    with run_lock(run_dir):
        swap.finish_interrupted(run_dir)
    assert contents(run_dir) == before


def test_readers_never_see_files_of_two_commits(tmp_path: Path) -> None:
    """One thread swaps commits back and forth under the lock; another reads every file of
    the run through ``read_committed`` and must always find a single generation."""
    run_dir = tmp_path / "runs" / "exp-run-0-m"
    commit_files(run_dir, "gen-0")
    swaps = 150
    done = threading.Event()
    errors: list[BaseException] = []

    def swapper() -> None:
        try:
            for n in range(1, swaps + 1):
                staged = stage(run_dir, f"gen-{n}")
                with run_lock(run_dir):
                    retired = swap.install(run_dir, staged, KEEP)
                shutil.rmtree(retired)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)
        finally:
            done.set()

    def read_all() -> set[str]:
        # The files of a commit (hidden ones, like the swap's journal, belong to none).
        files = {k: v for k, v in contents(run_dir).items() if not k.startswith(".")}
        generations = {value for name, value in files.items() if name != RUN_MANIFEST}
        generations.add(json.loads(files[RUN_MANIFEST])["generation"])
        return generations

    thread = threading.Thread(target=swapper)
    thread.start()
    reads = 0
    seen: set[str] = set()
    while not done.is_set() or reads == 0:
        generations = read_committed(run_dir, read_all)
        assert len(generations) == 1, f"a read mixed commits: {sorted(generations)}"
        seen |= generations
        reads += 1
    thread.join()
    assert not errors, errors
    assert read_committed(run_dir, read_all) == {f"gen-{swaps}"}
    assert len(seen) > 1, "the reads never overlapped the swaps"
