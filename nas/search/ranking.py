"""How well a supernet ranks archs: rank correlations with a bootstrap interval, and archs stratified by MACs.

`scripts/study_ranking.py` uses these to compare inherited top-1 with stand-alone top-1 (and with MACs or params
alone, the baselines a supernet must beat).
"""
from __future__ import annotations

import numpy as np

from nas.cost_model import arch_cost, extreme_arch
from search_spaces import Arch, SearchSpace


def kendall_tau(x, y) -> float:
    """Kendall's tau-b: (concordant - discordant) pairs over the pairs not tied in x and not tied in y.
    nan when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n_x, n_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if n_x == 0 or n_y == 0:
        return float("nan")
    return float(np.sum(dx * dy) / np.sqrt(n_x * n_y))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the (average) ranks. nan when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def bootstrap_interval(x, y, statistic, *, level: float = 0.9, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile interval of `statistic(x, y)` over `resamples` resamplings of the (x, y) pairs with
    replacement (resamples where the statistic is undefined, e.g. all pairs the same, are dropped)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(x), len(x))
        value = statistic(x[pick], y[pick])
        if not np.isnan(value):
            values.append(value)
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def correlation_summary(x, y, *, level: float = 0.9, seed: int = 0) -> dict:
    """Kendall tau and Spearman rho of x and y, each with its bootstrap interval."""
    summary = {}
    for name, statistic in (("kendall_tau", kendall_tau), ("spearman_rho", spearman_rho)):
        summary[name] = statistic(x, y)
        summary[f"{name}_interval"] = bootstrap_interval(x, y, statistic, level=level, seed=seed)
    return summary


def stratified_archs(space: SearchSpace, n: int, seed: int = 0, pool: int = 4000) -> list[Arch]:
    """`n` distinct archs spread over the whole MAC range of the space, smallest first: the space's smallest and
    largest arch, and for each of the n - 2 interior points equally spaced in log-MACs, the arch of a fixed
    uniform pool (`pool` draws from numpy's generator seeded `seed`) nearest to it. Deterministic."""
    if n < 2:
        raise ValueError(f"n {n!r}: expected at least 2 archs (the smallest and the largest)")
    rng = np.random.default_rng(seed)
    candidates = {space.sample(rng) for _ in range(pool)}
    smallest, largest = extreme_arch(space, largest=False), extreme_arch(space, largest=True)
    candidates -= {smallest, largest}
    candidates = sorted(candidates, key=lambda a: (arch_cost(a, space)[0], a.hash))
    log_macs = np.log([arch_cost(a, space)[0] for a in candidates])
    low, high = np.log(arch_cost(smallest, space)[0]), np.log(arch_cost(largest, space)[0])
    chosen, taken = [smallest], set()
    for target in np.linspace(low, high, n)[1:-1]:
        order = np.argsort(np.abs(log_macs - target), kind="stable")
        pick = next((int(i) for i in order if int(i) not in taken), None)
        if pick is None:
            raise ValueError(f"space {space.name!r}: fewer than {n} distinct archs in a pool of {pool} draws")
        taken.add(pick)
        chosen.append(candidates[pick])
    chosen.append(largest)
    return sorted(chosen, key=lambda a: arch_cost(a, space)[0])
