"""Every evaluated candidate of a study as rows (`candidates`), and their Pareto front on (top-1, MACs)."""
from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from nas.search.sampler import CLAIM_KEY, params_arch, rank_key
from search_spaces import Arch, SearchSpace

CSV_COLUMNS = ("trial", "generation", "arch", "top1", "macs", "params", "on_front", "genes")


@dataclass(frozen=True)
class Candidate:
    trial: int
    generation: int
    arch: Arch
    top1: float
    macs: int
    params: int
    on_front: bool = False


def candidates(study: optuna.Study, space: SearchSpace, generation_key: str) -> list[Candidate]:
    """Every evaluated arch of the study, best first (top-1, then fewer MACs, then hash), with its front flag."""
    trials = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.system_attrs.get(CLAIM_KEY)), key=rank_key)
    rows = [Candidate(t.number, t.system_attrs[generation_key], params_arch(space, t.params), t.values[0],
                      t.user_attrs["macs"], t.user_attrs["params"]) for t in trials]
    front = {c.trial for c in pareto_front(rows)}
    return [Candidate(**{**c.__dict__, "on_front": c.trial in front}) for c in rows]


def pareto_front(rows: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both accuracy (higher) and MACs (lower), by increasing MACs."""
    front: list[Candidate] = []
    for c in sorted(rows, key=lambda c: (c.macs, -c.top1, c.arch.hash)):
        if not front or c.top1 > front[-1].top1:
            front.append(c)
    return front
