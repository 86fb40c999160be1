"""The rules of a sweep as pure functions: grid order, halving rungs and decisions, the best
trial. Deterministic and free of I/O, so the sweep workflow can call them (and replay them).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.sweep_types import ParamSpec, SuccessiveHalving, TunableField
from shared.tasks import is_minimized

# TPE proposes at random until this many trials have finished; Optuna's own default (10)
# would leave a small sweep with no guided trial at all.
MAX_TPE_STARTUP_TRIALS = 10


def grid_points(space: Mapping[TunableField, ParamSpec]) -> list[dict[str, Any]]:
    """The cartesian product of every ``values`` list: keys in the order given, the last key
    varying fastest, values in their given order."""
    names: list[str] = list(space)
    axes = [spec.values or [] for spec in space.values()]
    return [dict(zip(names, combination, strict=True)) for combination in itertools.product(*axes)]


def tpe_startup_trials(num_trials: int) -> int:
    """Random trials before TPE models the results: a quarter of the sweep, 2 to 10."""
    return max(2, min(MAX_TPE_STARTUP_TRIALS, num_trials // 4))


def trial_seed(sweep_seed: int, trial_index: int) -> int:
    """The sampler seed for one trial: the same for the same sweep seed and index, whatever
    order trials are proposed in, and different between trials."""
    digest = hashlib.sha256(f"{sweep_seed}:{trial_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def halving_rungs(early_stopping: SuccessiveHalving | None, num_epochs: int) -> list[int]:
    """Epochs ``min_epochs × factor^k`` below ``num_epochs``: where a trial may be pruned
    (the last epoch never prunes)."""
    if early_stopping is None:
        return []
    rungs = []
    rung = early_stopping.min_epochs
    while rung < num_epochs:
        rungs.append(rung)
        rung *= early_stopping.reduction_factor
    return rungs


def is_better(metric: str, candidate: float, incumbent: float) -> bool:
    return candidate < incumbent if is_minimized(metric) else candidate > incumbent


def ranking_key(metric: str, trial_index: int, value: float) -> tuple[float, int]:
    """Sorts best first; equal values favour the lower trial index."""
    return (value if is_minimized(metric) else -value, trial_index)


def keeps_training(
    arrivals: Sequence[tuple[int, float]], trial_index: int, metric: str, reduction_factor: int
) -> bool:
    """Asynchronous successive halving at one rung.

    ``arrivals`` holds ``(trial_index, value)`` of every trial that has reached this rung so
    far, this one included. The trial continues when it is among the best
    ``max(1, floor(n / reduction_factor))`` of those ``n`` (ties favour the lower index).
    """
    keep = max(1, math.floor(len(arrivals) / reduction_factor))
    ranked = sorted(arrivals, key=lambda item: ranking_key(metric, item[0], item[1]))
    return trial_index in {index for index, _ in ranked[:keep]}


def best_trial(candidates: Iterable[tuple[int, float]], metric: str) -> int | None:
    """The trial index with the best value (ties: the lowest index); None if none."""
    ranked = sorted(candidates, key=lambda item: ranking_key(metric, item[0], item[1]))
    return ranked[0][0] if ranked else None
