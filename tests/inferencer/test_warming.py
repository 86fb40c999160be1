"""Promoted runs are loaded ahead of their first request, on every inferencer by itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.inferencer.model_cache import ModelCache
from services.inferencer.warming import DEVICE, AliasWarmer
from shared.aliases import apply_rollout, promote
from shared.types import BertPromoteInput
from tests.helpers.runs import make_run
from tests.tiny import build_tiny_bert


def wait_loaded(cache: ModelCache, run_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cache.is_current(run_dir, DEVICE):
        assert time.monotonic() < deadline, f"{run_dir.name} was never loaded"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("warming") / "tiny-bert")


def test_aliases_are_warmed_at_start_and_when_they_move(tiny: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    first = make_run(runs, "first", tiny, ["neg", "pos"])
    second = make_run(runs, "second", tiny, ["neg", "pos"])
    unrelated = make_run(runs, "unrelated", tiny, ["neg", "pos"])
    promote(runs, "first", "prod")
    cache = ModelCache(4)
    warmer = AliasWarmer(runs, cache, interval_seconds=10, limit=4)

    assert warmer.tick() == ["first"]  # at start: every alias
    wait_loaded(cache, first)
    assert warmer.tick() == []  # nothing moved, nothing stale

    promote(runs, "second", "prod")
    assert warmer.tick() == ["second"]
    wait_loaded(cache, second)
    assert not cache.is_current(unrelated, DEVICE)  # runs without an alias wait for traffic

    # The model changed on disk (as when its export lands): loaded again.
    (second / "run.json").touch()
    time.sleep(0.01)
    assert cache.stale(second, DEVICE)
    assert warmer.tick() == ["second"]
    wait_loaded(cache, second)


def test_an_alias_to_a_removed_run_is_skipped(tiny: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    make_run(runs, "gone", tiny, ["neg", "pos"])
    promote(runs, "gone", "prod")
    (runs / "gone" / "run.json").unlink()
    assert AliasWarmer(runs, ModelCache(2), 10, 2).tick() == []


def test_an_alias_canary_and_shadow_are_warmed_with_it(tiny: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    first = make_run(runs, "first", tiny, ["neg", "pos"])
    canary = make_run(runs, "canary", tiny, ["neg", "pos"])
    shadow = make_run(runs, "shadow", tiny, ["neg", "pos"])
    promote(runs, "first", "prod")
    cache = ModelCache(4)
    warmer = AliasWarmer(runs, cache, interval_seconds=10, limit=4)
    assert warmer.tick() == ["first"]
    wait_loaded(cache, first)

    apply_rollout(runs, BertPromoteInput(run_id="canary", alias="prod", canary_percent=10))
    assert warmer.tick() == ["canary"]  # the alias's own run is loaded already
    wait_loaded(cache, canary)
    apply_rollout(runs, BertPromoteInput(run_id="shadow", alias="prod", shadow=True))
    assert warmer.tick() == ["shadow"]
    wait_loaded(cache, shadow)
