"""The four things the search needs from optuna beyond its public API, in one place.

Everything else goes through optuna's public interfaces (`BaseGASampler`, `BaseStorage`, `Study`). These four have
no public form in optuna 4 and 5; tests/nas/test_optuna_adapter.py checks each against the installed optuna, so an
optuna release that moves one fails there, by name, rather than somewhere inside a search.
"""
from __future__ import annotations

import optuna
from optuna.samplers import BaseGASampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (the workers of a search share it)."""
    return study._storage


def trial_id(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial of `study`, through the storage's public lookup by trial number."""
    storage = storage_of(study)
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                           trial.number)


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the trials that optuna caches between ask and tell, so that the next read sees what other workers
    wrote meanwhile (parents are selected from the whole previous generation, whoever evaluated it)."""
    study._thread_local.cached_all_trials = None


def generation_key(sampler: type[BaseGASampler] | BaseGASampler) -> str:
    """The trial system attribute in which `BaseGASampler.get_trial_generation` reads a trial's generation."""
    return sampler._get_generation_key()


def nsga2_elite(study: optuna.Study, population: list[FrozenTrial], size: int) -> list[FrozenTrial]:
    """NSGA-II's elite of `population`: `size` trials by non-dominated rank, then crowding distance."""
    from optuna.samplers.nsgaii._elite_population_selection_strategy import NSGAIIElitePopulationSelectionStrategy

    return NSGAIIElitePopulationSelectionStrategy(population_size=size)(study, population)
