"""The adapter's private reads of optuna, checked against the installed optuna: a release that moves one fails
here by name (nas/search/optuna_adapter.py)."""
import optuna
from optuna.distributions import FloatDistribution
from optuna.samplers import BaseGASampler, NSGAIISampler
from optuna.storages import BaseStorage
from optuna.trial import TrialState, create_trial

from nas.search.optuna_adapter import forget_cached_trials, generation_key, nsga2_elite, storage_of, trial_id


def _study(directions=("maximize",)):
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=list(directions))


def test_storage_of_is_the_storage_that_holds_the_study():
    study = _study()
    storage = storage_of(study)
    assert isinstance(storage, BaseStorage)
    assert storage.get_study_id_from_name(study.study_name) is not None


def test_trial_id_names_the_trial_in_its_storage():
    study = _study()
    for _ in range(3):
        study.tell(study.ask(), 0.5)
    trial = study.ask()
    storage_of(study).set_trial_system_attr(trial_id(study, trial), "probe", trial.number)
    assert study.get_trials(deepcopy=False)[-1].system_attrs["probe"] == 3
    frozen = study.get_trials(deepcopy=False)[1]
    assert storage_of(study).get_trial(trial_id(study, frozen)).number == 1


def test_forget_cached_trials_lets_a_cached_read_see_other_workers_trials():
    study = _study()
    other = optuna.load_study(study_name=study.study_name, storage=storage_of(study))
    study._thread_local.cached_all_trials = []  # the state optuna leaves between ask and tell
    other.tell(other.ask(), 1.0)
    assert study._get_trials(deepcopy=False, use_cache=True) == []  # still the stale cache
    forget_cached_trials(study)
    assert len(study._get_trials(deepcopy=False, use_cache=True)) == 1


def test_generation_key_is_where_base_ga_sampler_reads_the_generation():
    sampler = NSGAIISampler(population_size=2)
    assert isinstance(sampler, BaseGASampler)
    study = _study()
    trial = study.ask()
    storage_of(study).set_trial_system_attr(trial_id(study, trial), generation_key(sampler), 7)
    frozen = study.get_trials(deepcopy=False)[-1]
    assert sampler.get_trial_generation(study, frozen) == 7


def test_nsga2_elite_keeps_the_first_front():
    study = _study(("maximize", "minimize"))
    dist = {"x": FloatDistribution(0, 1)}
    values = [(0.9, 5.0), (0.8, 1.0), (0.5, 0.5), (0.4, 6.0), (0.3, 7.0)]  # the first three are non-dominated
    trials = [create_trial(params={"x": 0.1 * i}, distributions=dist, values=list(v), state=TrialState.COMPLETE)
              for i, v in enumerate(values)]
    for t in trials:
        study.add_trial(t)
    population = study.get_trials(deepcopy=False)
    elite = nsga2_elite(study, population, 3)
    assert sorted(tuple(t.values) for t in elite) == sorted(values[:3])
