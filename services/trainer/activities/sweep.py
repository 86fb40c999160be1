"""Local activities of the sweep workflow: trial proposals (Optuna) and the run-id check.

Both run wherever the sweep's workflow task runs: a GPU trainer or a controller worker with
no GPU that trains nothing. Proposals are recorded in the workflow history as local
activity results, so the workflow stays deterministic however Optuna samples.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.trainer.orchestration.sweep_rules import grid_points, tpe_startup_trials, trial_seed
from shared.errors import INVALID_CONFIG, failure
from shared.logging import get_logger
from shared.run_record import NOT_IDENTITY, identity_fields
from shared.runs import is_complete, read_record, resolve_run_dir
from shared.storage import store_for
from shared.sweep_types import (
    CHECK_SWEEP_RUNS_ACTIVITY,
    INTEGER_FIELDS,
    MINIMISED_METRICS,
    PROPOSE_TRIALS_ACTIVITY,
    BertSweepInput,
    ParamSpec,
    SweepRunsCheck,
    TrialObservation,
    TrialProposalRequest,
)
from shared.types import BertFineTuneConfig

log = get_logger(__name__)


@activity.defn(name=PROPOSE_TRIALS_ACTIVITY)
async def propose_sweep_trials(request: TrialProposalRequest) -> list[dict[str, Any]]:
    """Params for trials ``first_index`` onwards (off the event loop: Optuna is CPU work)."""
    return await asyncio.to_thread(propose, request)


def propose(request: TrialProposalRequest) -> list[dict[str, Any]]:
    """Grid: the next points of the product. Random and TPE: one fresh Optuna study per
    trial, seeded from the sweep seed and the trial index, rebuilt from the observations,
    asked once."""
    indices = range(request.first_index, request.first_index + request.count)
    if request.strategy == "grid":
        points = grid_points(request.space)
        return [points[index] for index in indices]
    optuna = _import_optuna()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions: dict[str, Any] = {
        name: _distribution(name, spec) for name, spec in request.space.items()
    }
    proposals = []
    for index in indices:
        study = optuna.create_study(
            direction="minimize" if request.metric in MINIMISED_METRICS else "maximize",
            sampler=_sampler(request, index),
        )
        study.add_trials([_frozen_trial(o, distributions) for o in request.history])
        trial = study.ask(distributions)
        proposals.append({name: trial.params[name] for name in distributions})
    return proposals


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ApplicationError(
            "this worker cannot propose sweep trials: optuna is not installed; install "
            "bert-finetune[trainer] on every worker that polls the training queue",
            type="WorkerMisconfigured",
            non_retryable=True,
        ) from None
    return optuna


def _sampler(request: TrialProposalRequest, index: int) -> Any:
    optuna = _import_optuna()

    seed = trial_seed(request.seed, index)
    if request.strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        # constant_liar is marked experimental; it keeps concurrent proposals apart.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=tpe_startup_trials(request.num_trials),
            constant_liar=True,
        )


def _distribution(name: str, spec: ParamSpec) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if spec.values is not None:
        return CategoricalDistribution(spec.values)
    assert spec.min is not None and spec.max is not None
    if name in INTEGER_FIELDS:
        return IntDistribution(int(spec.min), int(spec.max), log=spec.log)
    return FloatDistribution(float(spec.min), float(spec.max), log=spec.log)


def _frozen_trial(observation: TrialObservation, distributions: dict[str, Any]) -> Any:
    from optuna.trial import TrialState, create_trial

    state = {
        "running": TrialState.RUNNING,
        "succeeded": TrialState.COMPLETE,
        "pruned": TrialState.PRUNED,
        "failed": TrialState.FAIL,
    }[observation.state]
    if state == TrialState.COMPLETE and observation.value is None:
        state = TrialState.FAIL  # finished without the metric: nothing to learn from
    return create_trial(
        params=observation.params,
        distributions=distributions,
        value=observation.value if state == TrialState.COMPLETE else None,
        state=state,
        intermediate_values=dict(observation.intermediate),
    )


class SweepRunActivities:
    """The fast refusal of a sweep whose run ids already hold runs of other configs."""

    def __init__(self, runs_root: Path) -> None:
        self._runs_root = runs_root

    @activity.defn(name=CHECK_SWEEP_RUNS_ACTIVITY)
    async def check_sweep_runs(self, check: SweepRunsCheck) -> None:
        await asyncio.to_thread(refuse_other_runs, self._runs_root, check)


def refuse_other_runs(runs_root: Path, check: SweepRunsCheck) -> None:
    """Raise ``InvalidConfig`` when a trial's run id holds a finished run this sweep would
    not have produced. Trials with known params (grid, random) must match exactly; trials
    not proposed yet (TPE) must match the base config outside the space and lie inside it.
    """
    sweep = check.sweep
    if sweep.overwrite:
        return
    if (store := store_for(runs_root)) is not None:
        store.sync_records(runs_root)  # the store's runs, mirrored into the private root
    for index, params in enumerate(check.proposals):
        run_id = sweep.trial_run_id(index, params)
        existing = _finished_identity(runs_root, run_id)
        if existing is not None and existing != identity_fields(sweep.trial_config(params)):
            raise _refusal(sweep, run_id)
    if len(check.proposals) >= sweep.total_trials() or not runs_root.is_dir():
        return
    later = range(len(check.proposals), sweep.total_trials())
    pattern = re.compile(rf"{re.escape(sweep.sweep_name)}-run-(\d+)-")
    for entry in sorted(runs_root.iterdir()):
        match = pattern.match(entry.name)
        if not match or int(match.group(1)) not in later:
            continue
        existing = _finished_identity(runs_root, entry.name)
        if existing is not None and not _could_be_trial(sweep, existing):
            raise _refusal(sweep, entry.name)


def _finished_identity(runs_root: Path, run_id: str) -> dict[str, Any] | None:
    """The config identity of the finished run at ``run_id``; None when there is none."""
    run_dir = resolve_run_dir(runs_root, run_id)
    if not is_complete(run_dir):
        return None
    try:
        return identity_fields(read_record(run_dir).config)
    except ApplicationError:
        # Unreadable, or written by a newer version: not a run this sweep produced.
        return {}


def _could_be_trial(sweep: BertSweepInput, identity: dict[str, Any]) -> bool:
    """Outside the space the run matches ``base``; inside, its values lie in the space."""
    if not identity:
        return False
    defaults = BertFineTuneConfig().model_dump(mode="json")
    full, base = {**defaults, **identity}, {**defaults, **identity_fields(sweep.base)}
    for name, value in full.items():
        if name in NOT_IDENTITY:
            continue
        spec = sweep.space.get(name)  # type: ignore[call-overload]
        if spec is None:
            if value != base[name]:
                return False
        elif spec.values is not None:
            if value not in spec.values:
                return False
        elif not (spec.min is not None and spec.max is not None and spec.min <= value <= spec.max):
            return False
    return True


def _refusal(sweep: BertSweepInput, run_id: str) -> Exception:
    log.info("sweep.refused", sweep=sweep.sweep_name, run_id=run_id)
    return failure(
        INVALID_CONFIG,
        f"sweep_name {sweep.sweep_name!r}: run {run_id!r} already holds a finished run of "
        "another config; choose another sweep_name or set overwrite: true to replace it",
    )
