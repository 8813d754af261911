"""Optuna samplers for the search: random, TPE (model-based) and regularized evolution.

Regularized evolution (Real et al., 2019, the AmoebaNet search) is written here as an Optuna
sampler so it shares the study, storage, resume and workers with the others: the population is
the ``population`` most recently *created* finished trials (old ones age out, whatever their
reward); ``sample_size`` of them are drawn at random and the best is copied with exactly one
choice changed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from ..errors import UsageError

SAMPLERS: tuple[str, ...] = ("random", "tpe", "evolution")


class RegularizedEvolutionSampler(BaseSampler):
    def __init__(self, *, population: int = 16, sample_size: int = 4, seed: int | None = None) -> None:
        if population < 2 or not 1 <= sample_size <= population:
            raise UsageError(
                f"evolution: need population >= 2 and 1 <= sample_size <= population, got {population}, {sample_size}"
            )
        self.population = population
        self.sample_size = sample_size
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._plans: dict[int, tuple[dict[str, Any], str]] = {}  # trial id -> (parent params, mutated name)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < self.population:
            return  # the first population is random
        population = sorted(done, key=lambda t: t.number)[-self.population :]
        picks = self._rng.choice(len(population), size=self.sample_size, replace=False)
        parent = max((population[int(i)] for i in picks), key=lambda t: t.value)
        names = sorted(parent.params)
        self._plans[trial._trial_id] = (dict(parent.params), names[int(self._rng.integers(len(names)))])

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        plan = self._plans.get(trial._trial_id)
        if plan is None or param_name not in plan[0]:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        parent, mutate = plan
        if param_name != mutate:
            return parent[param_name]
        others = [v for v in _values(param_distribution) if v != parent[param_name]]
        return others[int(self._rng.integers(len(others)))] if others else parent[param_name]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._plans.pop(trial._trial_id, None)


def _values(dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    raise TypeError(f"evolution: unsupported distribution {dist!r}")


def make_sampler(name: str, *, seed: int, population: int = 16, startup: int = 10) -> BaseSampler:
    """``random``, ``tpe`` (multivariate TPE, constant liar for parallel workers) or ``evolution``."""
    if name == "random":
        return RandomSampler(seed=seed)
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate TPE is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True)
    if name == "evolution":
        return RegularizedEvolutionSampler(population=population, sample_size=max(2, population // 4), seed=seed)
    raise UsageError(f"--sampler {name!r} is not one of {', '.join(SAMPLERS)}")
