"""The study's Optuna sampler, reseeded per trial so that no process replays another's draws.

Optuna documents that workers sharing one seed draw the same values (its FAQ asks each worker for
its own seed), and a study resumed by a new process with `TPESampler(seed=s)` repeats every random
start-up draw. Deriving the seed from (study seed, trial number) gives every trial its own random
stream: the storage hands out each trial number once, so two processes, a resumed study or two
workers at once never re-draw the same start-up values, and a study re-run from the same history
draws the same values again (reproducible from `--seed` and the trial history).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

SAMPLERS = ("tpe", "random")


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial `number` of a study seeded with `seed` (independent streams)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates each trial to a sampler built for it by `factory(seed)`, with the trial's own seed.

    Call order (Optuna's): before_trial → infer_relative_search_space → sample_relative →
    sample_independent (per parameter) → after_trial; every call carries the trial, so the
    per-trial sampler is found by its number. TPE keeps no state between trials besides its RNG
    (the history is read from the storage), so rebuilding it per trial changes nothing else.
    """

    def __init__(self, factory: Callable[[int | None], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._per_trial: dict[int, BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._per_trial:
            self._per_trial[trial.number] = self._factory(trial_seed(self._seed, trial.number))
        return self._per_trial[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._per_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:  # seeds come from the trial numbers; nothing to reseed
        pass


def make_sampler(name: str, seed: int, startup_trials: int) -> BaseSampler:
    """The study's sampler by name: multivariate TPE with `startup_trials` random draws first
    (constant liar, so workers running at once do not propose the same point), or pure random
    search (the baseline a search must beat)."""
    if name == "tpe":
        def factory(s: int | None) -> BaseSampler:
            return optuna.samplers.TPESampler(seed=s, multivariate=True, constant_liar=True,
                                              n_startup_trials=startup_trials)
    elif name == "random":
        def factory(s: int | None) -> BaseSampler:
            return optuna.samplers.RandomSampler(seed=s)
    else:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    return TrialSeededSampler(factory, seed)
