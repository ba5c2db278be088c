"""SPOS's evolutionary search as an optuna sampler over the fixed-length categorical genome of a space.

A generation is a *plan*: a list of distinct archs that fit the budget and were never planned before, drawn
from a generator seeded by (seed, generation) out of the parents of the generation. Generation 0 is random;
then `mutations` children of random parents (each gene redrawn with `mutation_prob`), `crossovers` children of
two random parents (each gene from either), and random archs to fill the population, as SPOS does. Candidates
over budget, outside the space or already seen are rejected before they become trials, so they are never
evaluated; the draws are bounded (`max_tries`).

Parents (`select_parent`, cached in the study by optuna's `BaseGASampler`) come from the previous generation
and its parents: the `topk` best by the fitness (objective "top1", SPOS) or NSGA-II's elite population on
(fitness, MACs) (objective "pareto"). The fitness is the inherited top-1 (higher is better) or the inherited
mean cross-entropy (`fitness="loss"`, lower is better) on the held-out split; a trial's first value is it.
Everything the plan depends on is stored in the study, so a resumed search plans the same generations as an
uninterrupted one.

Several workers share a study: a trial *claims* a planned arch (a system attribute holding its hash) and
reads the study back; if another live trial claims the same arch, it withdraws and takes another. Of two
claims on one arch the later write sees the earlier one, so at most one of them is evaluated (both may
withdraw, then both retry). Workers wait for each other at the end of a generation, as the generational
algorithm requires. A trial left RUNNING by a dead worker is marked FAIL (`fail_dead_trials`), so its arch is
planned again: on an RDB storage, once its worker's heartbeat (`heartbeat`) has stopped, on any host; on every
storage, at once when its worker was a process of this host that is gone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseGASampler
from optuna.trial import FrozenTrial, TrialState

from nas.search.fitness_kinds import FITNESSES
from nas.search.optuna_adapter import forget_cached_trials, generation_key, nsga2_elite, storage_of, trial_id
from nas.search.workers import REAP_EVERY_S, WORKER_KEY, fail_dead_trials, worker_identity
from search_spaces import Arch, SearchSpace

OBJECTIVES = ("top1", "pareto")


CLAIM_KEY = "nas:arch"  # trial system attribute: hash of the arch the trial evaluates (None after a withdrawal)


@dataclass(frozen=True)
class Plan:
    generation: int
    archs: tuple[Arch, ...]  # distinct, within budget, never planned before
    rejected: int  # candidates drawn and thrown away: over budget, outside the space or seen before


@dataclass(frozen=True)
class GenerationState:
    generation: int  # the generation to work on; == generations when the search is over
    plan: Plan | None  # None when the search is over
    free: tuple[Arch, ...]  # archs of the plan neither done nor claimed by a running trial


def genome_distributions(space: SearchSpace) -> dict[str, CategoricalDistribution]:
    """One categorical optuna parameter per genome position ('s1.pool', ..., 's4.mlp_ratio')."""
    return {name: CategoricalDistribution(choices) for name, choices in zip(space.genome_names, space.genome_choices)}


def arch_params(space: SearchSpace, arch: Arch) -> dict:
    """The optuna parameters of an arch: the value of every genome position (the first choice for null genes)."""
    return {name: choices[i] for name, choices, i in zip(space.genome_names, space.genome_choices, space.encode(arch))}


def params_arch(space: SearchSpace, params: dict) -> Arch:
    return space.decode([choices.index(params[name]) for name, choices in zip(space.genome_names,
                                                                              space.genome_choices)])


def rank_key(fitness: str) -> Callable[[FrozenTrial], tuple]:
    """Sort key, best first: the better fitness (higher top-1, lower loss), then fewer MACs, then the hash (so
    ties never depend on evaluation order)."""
    sign = -1 if FITNESSES[fitness] == "maximize" else 1

    def key(trial: FrozenTrial) -> tuple:
        return sign * trial.values[0], trial.user_attrs.get("macs", 0), trial.system_attrs.get(CLAIM_KEY, "")
    return key


class EvolutionSampler(BaseGASampler):
    def __init__(self, space: SearchSpace, feasible: Callable[[Arch], bool], *, population: int = 50, topk: int = 10,
                 generations: int = 20, mutations: int = 25, mutation_prob: float = 0.1, crossovers: int = 25,
                 objective: str = "top1", fitness: str = "loss", seed: int = 0, max_tries: int = 100,
                 poll_s: float = 0.2):
        super().__init__(population_size=population)
        if objective not in OBJECTIVES:
            raise ValueError(f"--objective {objective!r}: choose from {list(OBJECTIVES)}")
        if fitness not in FITNESSES:
            raise ValueError(f"--fitness {fitness!r}: choose from {list(FITNESSES)}")
        self.fitness, self.rank_key = fitness, rank_key(fitness)
        self.space, self.feasible = space, feasible
        self.topk, self.generations, self.objective, self.seed = topk, generations, objective, seed
        self.mutations, self.mutation_prob, self.crossovers = mutations, mutation_prob, crossovers
        self.max_tries = max_tries  # draws per wanted arch: a tight budget rejects most random draws
        self.poll_s = poll_s
        self.distributions = genome_distributions(space)
        self._plans: dict[int, Plan] = {}
        self._claims: dict[int, Arch] = {}  # trial number -> the arch this process's trial claimed
        self._last_reap = time.monotonic()
        self._jitter = np.random.default_rng()  # only decides which free arch a contested worker tries next

    # ---- optuna's sampler interface ----------------------------------------------------------

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return dict(self.distributions)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        """Claim a free arch of the current generation (waiting for other workers when none is free);
        {} when the search is over."""
        storage, tid, first = storage_of(study), trial_id(study, trial), True
        storage.set_trial_system_attr(tid, WORKER_KEY, worker_identity())
        while True:
            progress = self.generation_state(study)
            if progress.plan is None:
                return {}
            if not progress.free:
                self.wait(study)
                continue
            free = progress.free
            arch = free[trial.number % len(free)] if first else free[self._jitter.integers(len(free))]
            first = False
            storage.set_trial_system_attr(tid, generation_key(self), progress.generation)
            storage.set_trial_system_attr(tid, CLAIM_KEY, arch.hash)
            if not self._contested(study, trial.number, arch.hash):
                self._claims[trial.number] = arch
                return arch_params(self.space, arch)
            storage.set_trial_system_attr(tid, CLAIM_KEY, None)
            time.sleep(self._jitter.uniform(0, self.poll_s))

    def wait(self, study: optuna.Study) -> None:
        """Sleep while other workers hold the rest of a generation; now and then fail the trials of workers
        that died meanwhile, which would otherwise hold their archs forever."""
        now = time.monotonic()
        if now - self._last_reap >= REAP_EVERY_S:
            self._last_reap = now
            fail_dead_trials(study)
        time.sleep(self.poll_s)

    def claimed(self, trial_number: int) -> Arch | None:
        """The arch a trial asked in this process claimed; None if the search was over when it was asked."""
        return self._claims.pop(trial_number, None)

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise RuntimeError(f"EvolutionSampler plans whole genomes; {param_name!r} is not a gene of space "
                           f"{self.space.name!r}")

    def select_parent(self, study: optuna.Study, generation: int) -> list[FrozenTrial]:
        forget_cached_trials(study)
        pool = self.get_population(study, generation - 1) + self.get_parent_population(study, generation - 1)
        pool.sort(key=self.rank_key)  # NSGA-II's crowding sort keeps input order on ties: make it the same everywhere
        if self.objective == "top1":
            return pool[:self.topk]
        return nsga2_elite(study, pool, self.population_size)

    # ---- the generations ---------------------------------------------------------------------

    def generation_state(self, study: optuna.Study) -> GenerationState:
        """Where the search stands: the first generation whose plan is not all done, and its free archs."""
        trials = study.get_trials(deepcopy=False)
        done = {t.system_attrs.get(CLAIM_KEY) for t in trials if t.state == TrialState.COMPLETE}
        claimed = {t.system_attrs.get(CLAIM_KEY) for t in trials if t.state == TrialState.RUNNING}
        for generation in range(self.generations):
            plan = self.plan(study, generation)
            if not plan.archs:  # nothing new fits the budget: the space is exhausted
                break
            todo = [a for a in plan.archs if a.hash not in done]
            if todo:
                return GenerationState(generation, plan, tuple(a for a in todo if a.hash not in claimed))
        return GenerationState(self.generations, None, ())

    def plan(self, study: optuna.Study, generation: int) -> Plan:
        """The archs of a generation. Call only once every earlier generation is done (its parents are chosen
        from their results)."""
        if generation not in self._plans:
            seen = {a.hash for g in range(generation) for a in self.plan(study, g).archs}
            self.get_parent_population(study, generation)  # selects and stores them, unless stored already
            # Read back what is stored (of two workers selecting at once, the storage keeps one), in rank order.
            parents = [params_arch(self.space, t.params)
                       for t in sorted(self.get_parent_population(study, generation), key=self.rank_key)]
            self._plans[generation] = self._draw(generation, parents, seen)
        return self._plans[generation]

    def _draw(self, generation: int, parents: list[Arch], seen: set[str]) -> Plan:
        rng = np.random.default_rng([self.seed, generation])
        space, archs, rejected = self.space, [], 0

        def offer(arch: Arch | None) -> None:
            nonlocal rejected
            if arch is None or arch.hash in seen or not self.feasible(arch):
                rejected += 1
                return
            seen.add(arch.hash)
            archs.append(arch)

        def fill(target: int, child) -> None:
            want = len(archs) + target
            for _ in range(self.max_tries * target):
                if len(archs) == want:
                    return
                offer(child())

        if parents:
            fill(self.mutations, lambda: _or_none(space.mutate, parents[rng.integers(len(parents))],
                                                  self.mutation_prob, rng))
            if len(parents) >= 2:
                fill(self.crossovers, lambda: _or_none(space.crossover, *(parents[i] for i in
                                                                          rng.choice(len(parents), 2, replace=False)),
                                                       rng))
        fill(max(0, self.population_size - len(archs)), lambda: _or_none(space.sample, rng))
        return Plan(generation, tuple(archs), rejected)

    def _contested(self, study: optuna.Study, number: int, arch_hash: str) -> bool:
        """Whether another live or finished trial claims the arch (read after our own claim was written)."""
        return any(t.number != number and t.system_attrs.get(CLAIM_KEY) == arch_hash
                   and t.state in (TrialState.RUNNING, TrialState.COMPLETE)
                   for t in study.get_trials(deepcopy=False))


def _or_none(operator, *args) -> Arch | None:
    """The operator's arch, or None when its bounded rejection found no valid one (counted as a rejection)."""
    try:
        return operator(*args)
    except RuntimeError:
        return None
