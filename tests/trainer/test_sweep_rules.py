"""The pure rules of a sweep and its proposals: grid order, rungs, halving, best trial,
seed reproducibility of random and TPE proposals."""

from __future__ import annotations

import math

import pytest

from services.trainer.activities.sweep import propose
from services.trainer.orchestration.sweep_rules import (
    best_trial,
    grid_points,
    halving_rungs,
    keeps_training,
    tpe_startup_trials,
)
from shared.sweep_types import (
    BertSweepInput,
    ParamSpec,
    SuccessiveHalving,
    TrialObservation,
    TrialProposalRequest,
)


def test_grid_is_the_product_in_key_order_last_key_fastest() -> None:
    space = {
        "learning_rate": ParamSpec(values=[0.01, 0.001]),
        "batch_size": ParamSpec(values=[8, 16, 32]),
    }
    assert grid_points(space) == [
        {"learning_rate": 0.01, "batch_size": 8},
        {"learning_rate": 0.01, "batch_size": 16},
        {"learning_rate": 0.01, "batch_size": 32},
        {"learning_rate": 0.001, "batch_size": 8},
        {"learning_rate": 0.001, "batch_size": 16},
        {"learning_rate": 0.001, "batch_size": 32},
    ]


@pytest.mark.parametrize(
    ("factor", "min_epochs", "num_epochs", "rungs"),
    [
        (2, 1, 1, []),
        (2, 1, 2, [1]),
        (2, 1, 3, [1, 2]),
        (2, 1, 8, [1, 2, 4]),
        (2, 1, 9, [1, 2, 4, 8]),
        (3, 1, 9, [1, 3]),
        (3, 2, 20, [2, 6, 18]),
        (4, 5, 5, []),
    ],
)
def test_rungs_lie_below_the_last_epoch(
    factor: int, min_epochs: int, num_epochs: int, rungs: list[int]
) -> None:
    halving = SuccessiveHalving(
        type="successive_halving", reduction_factor=factor, min_epochs=min_epochs
    )
    assert halving_rungs(halving, num_epochs) == rungs
    assert halving_rungs(None, num_epochs) == []


def test_asynchronous_halving_keeps_the_top_fraction_of_arrivals_so_far() -> None:
    arrivals: list[tuple[int, float]] = []
    decisions = []
    for index, accuracy in enumerate([0.6, 0.5, 0.9, 0.4, 0.7, 0.95]):
        arrivals.append((index, accuracy))
        decisions.append(keeps_training(arrivals, index, "eval_accuracy", 2))
    # n=1 keeps 1 (the first always continues); n=2: top 1 (0.6, not 0.5); n=3: top 1
    # (0.9); n=4: top 2 (0.9, 0.6: not 0.4); n=5: top 2 (0.9, 0.7); n=6: top 3.
    assert decisions == [True, False, True, False, True, True]


def test_halving_minimises_loss_and_ties_favour_the_lower_index() -> None:
    assert keeps_training([(0, 0.3), (1, 0.2)], 1, "eval_loss", 2)
    assert not keeps_training([(0, 0.3), (1, 0.2)], 0, "eval_loss", 2)
    assert keeps_training([(3, 0.5), (1, 0.5)], 1, "eval_accuracy", 2)
    assert not keeps_training([(3, 0.5), (1, 0.5)], 3, "eval_accuracy", 2)
    # A factor of 4 keeps max(1, floor(n / 4)).
    arrivals = [(i, 0.1 * i) for i in range(8)]
    assert [keeps_training(arrivals, i, "eval_accuracy", 4) for i in range(8)] == [False] * 6 + [
        True,
        True,
    ]


def test_best_trial_by_direction_ties_to_the_lowest_index() -> None:
    assert best_trial([(2, 0.8), (0, 0.9), (1, 0.9)], "eval_accuracy") == 0
    assert best_trial([(2, 0.8), (0, 0.9)], "eval_loss") == 2
    assert best_trial([], "eval_f1_macro") is None


SPACE = {
    "learning_rate": {"min": 1e-5, "max": 1e-2, "log": True},
    "batch_size": {"values": [8, 16]},
    "num_epochs": {"min": 1, "max": 3},
    "warmup_ratio": {"min": 0.0, "max": 0.2},
}


def _request(strategy: str, seed: int = 0, **fields: object) -> TrialProposalRequest:
    sweep = BertSweepInput.model_validate(
        {"sweep_name": "s", "base": {"train_file": "t.csv"}, "space": SPACE}
    )
    values = {
        "space": sweep.space,
        "strategy": strategy,
        "seed": seed,
        "metric": "eval_accuracy",
        "num_trials": 12,
        "first_index": 0,
        "count": 6,
    }
    values.update(fields)
    return TrialProposalRequest.model_validate(values)


def test_random_proposals_depend_only_on_seed_and_index() -> None:
    all_at_once = propose(_request("random"))
    one_by_one = [propose(_request("random", first_index=i, count=1))[0] for i in range(6)]
    assert all_at_once == one_by_one
    assert propose(_request("random", seed=1)) != all_at_once
    assert len({tuple(p.values()) for p in all_at_once}) == 6
    for params in all_at_once:
        assert list(params) == list(SPACE)
        assert 1e-5 <= params["learning_rate"] <= 1e-2
        assert params["batch_size"] in (8, 16)
        assert isinstance(params["num_epochs"], int) and 1 <= params["num_epochs"] <= 3
        assert 0.0 <= params["warmup_ratio"] <= 0.2


def _distance_from_best(params: dict) -> float:
    """Quality known in advance: the loss is least at learning_rate 1e-3."""
    return abs(math.log10(params["learning_rate"]) + 3)


@pytest.mark.parametrize("seed", range(4))
def test_tpe_is_reproducible_and_beats_random_after_its_startup_trials(seed: int) -> None:
    space = {"learning_rate": ParamSpec(min=1e-5, max=1e-2, log=True)}

    def request(strategy: str, first: int, count: int, history: list) -> TrialProposalRequest:
        return TrialProposalRequest(
            space=space,
            strategy=strategy,  # type: ignore[arg-type]
            seed=seed,
            metric="eval_loss",
            num_trials=16,
            first_index=first,
            count=count,
            history=history,
        )

    startup = tpe_startup_trials(16)
    history: list[TrialObservation] = []
    for index in range(16):
        (params,) = propose(request("tpe", index, 1, history))
        assert propose(request("tpe", index, 1, history)) == [params]  # same input, same answer
        history.append(
            TrialObservation(
                trial_index=index,
                params=params,
                state="succeeded",
                value=_distance_from_best(params),
            )
        )
    guided = [_distance_from_best(o.params) for o in history[startup:]]
    at_random = [_distance_from_best(p) for p in propose(request("random", startup, 12, []))]
    assert sum(guided) / len(guided) < sum(at_random) / len(at_random)


def test_tpe_startup_trials_are_between_two_and_ten() -> None:
    assert [tpe_startup_trials(n) for n in (1, 8, 12, 40, 100)] == [2, 2, 3, 10, 10]


def test_grid_proposals_continue_where_asked() -> None:
    sweep = BertSweepInput.model_validate(
        {
            "sweep_name": "s",
            "base": {"train_file": "t.csv"},
            "space": {"seed": {"values": [1, 2, 3]}, "batch_size": {"values": [8, 16]}},
            "strategy": "grid",
        }
    )
    request = TrialProposalRequest(
        space=sweep.space,
        strategy="grid",
        seed=0,
        metric="eval_loss",
        num_trials=sweep.total_trials(),
        first_index=2,
        count=3,
    )
    assert sweep.total_trials() == 6
    assert propose(request) == [
        {"seed": 2, "batch_size": 8},
        {"seed": 2, "batch_size": 16},
        {"seed": 3, "batch_size": 8},
    ]
