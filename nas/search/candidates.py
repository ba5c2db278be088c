"""Every evaluated candidate of a study as rows (`candidates`), and their Pareto front on (fitness, MACs)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import optuna
from optuna.trial import TrialState

from nas.search.sampler import CLAIM_KEY, params_arch, rank_key
from search_spaces import Arch, SearchSpace

CSV_COLUMNS = ("trial", "generation", "arch", "top1", "loss", "macs", "params", "on_front", "genes")


@dataclass(frozen=True)
class Candidate:
    trial: int
    generation: int
    arch: Arch
    top1: float  # inherited top-1 on the held-out split
    loss: float | None  # inherited mean cross-entropy there (None in a study of before the loss was recorded)
    macs: int
    params: int
    fitness: str  # what the search ranks by: a key of FITNESSES
    on_front: bool = False

    @property
    def score(self) -> float:
        """The fitness as higher-is-better: top-1, or the negated loss."""
        return self.top1 if self.fitness == "top1" else -self.loss


def candidates(study: optuna.Study, space: SearchSpace, generation_key: str, fitness: str) -> list[Candidate]:
    """Every evaluated arch of the study, best first (fitness, then fewer MACs, then hash), with its front flag."""
    trials = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.system_attrs.get(CLAIM_KEY)), key=rank_key(fitness))
    rows = [Candidate(t.number, t.system_attrs[generation_key], params_arch(space, t.params),
                      t.user_attrs.get("top1", t.values[0]), t.user_attrs.get("loss"), t.user_attrs["macs"],
                      t.user_attrs["params"], fitness) for t in trials]
    front = {c.trial for c in pareto_front(rows)}
    return [replace(c, on_front=c.trial in front) for c in rows]


def pareto_front(rows: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both fitness (top-1 higher, loss lower) and MACs (lower), by increasing
    MACs."""
    front: list[Candidate] = []
    for c in sorted(rows, key=lambda c: (c.macs, -c.score, c.arch.hash)):
        if not front or c.score > front[-1].score:
            front.append(c)
    return front
