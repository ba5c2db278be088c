"""Rank correlations against their definitions, the bootstrap interval, the stratified choice of archs, and the
inherited scores (top-1 and loss) that the ranking study correlates."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nas.cost_model import arch_cost, extreme_arch
from nas.search.ranking import bootstrap_interval, correlation_summary, kendall_tau, spearman_rho, stratified_archs
from nas.train.accuracy import top1, top1_and_loss
from search_spaces import load_space


def tau_b_by_pairs(x, y) -> float:
    """Kendall's tau-b from its definition, one pair at a time."""
    concordant = discordant = tied_x = tied_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tied_x += 1
        elif sy == 0:
            tied_y += 1
        elif sx == sy:
            concordant += 1
        else:
            discordant += 1
    n0 = concordant + discordant
    return (concordant - discordant) / np.sqrt((n0 + tied_y) * (n0 + tied_x))


def test_kendall_tau_equals_the_pairwise_definition_with_and_without_ties():
    rng = np.random.default_rng(0)
    for trial in range(20):
        x = rng.integers(0, 6 if trial % 2 else 1000, 15).astype(float)  # odd trials: many ties
        y = x + rng.normal(0, 3, 15).round(0 if trial % 2 else 3)
        assert kendall_tau(x, y) == pytest.approx(tau_b_by_pairs(x, y), abs=1e-12)


def test_rank_correlations_of_orders():
    x = np.arange(10.0)
    assert kendall_tau(x, x ** 3) == pytest.approx(1.0)
    assert spearman_rho(x, np.exp(x)) == pytest.approx(1.0)
    assert kendall_tau(x, -x) == pytest.approx(-1.0)
    assert spearman_rho(x, -x) == pytest.approx(-1.0)
    assert np.isnan(kendall_tau(x, np.ones(10)))
    assert np.isnan(spearman_rho(x, np.ones(10)))


def test_spearman_is_pearson_of_average_ranks():
    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    y = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0]
    rank_x = [4, 1.5, 5, 1.5, 6, 8, 3, 7]  # the two 1s share rank 1.5
    rank_y = [3.5, 5, 1.5, 7, 3.5, 7, 1.5, 7]
    assert spearman_rho(x, y) == pytest.approx(np.corrcoef(rank_x, rank_y)[0, 1], abs=1e-12)


def test_bootstrap_interval_brackets_a_strong_correlation_and_is_reproducible():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + rng.normal(0, 0.3, 30)
    low, high = bootstrap_interval(x, y, kendall_tau, seed=3)
    assert low < kendall_tau(x, y) < high
    assert 0.3 < low and high <= 1.0
    assert (low, high) == bootstrap_interval(x, y, kendall_tau, seed=3)
    noise = bootstrap_interval(x, rng.normal(size=30), kendall_tau, seed=3)
    assert noise[0] < 0 < noise[1]  # unrelated data: the interval holds 0
    summary = correlation_summary(x, y)
    assert summary["spearman_rho_interval"][0] < summary["spearman_rho"] < summary["spearman_rho_interval"][1]


def test_stratified_archs_span_the_space_deterministically():
    space = load_space("tiny-32")
    archs = stratified_archs(space, 12, seed=0, pool=500)
    assert archs == stratified_archs(space, 12, seed=0, pool=500)
    assert len(set(archs)) == 12
    assert archs[0] == extreme_arch(space, largest=False) and archs[-1] == extreme_arch(space, largest=True)
    log_macs = np.log([arch_cost(a, space)[0] for a in archs])
    assert np.all(np.diff(log_macs) >= 0)
    gaps = np.diff(log_macs)  # evenly spread: no gap more than 3x the even spacing
    assert gaps.max() < 3 * (log_macs[-1] - log_macs[0]) / 11
    with pytest.raises(ValueError, match="at least 2"):
        stratified_archs(space, 1)


def test_top1_and_loss_equal_the_whole_set_computed_at_once():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    images, labels = torch.randn(23, 5), torch.randint(0, 4, (23,))
    loader = [(images[i:i + 8], labels[i:i + 8]) for i in range(0, 23, 8)]  # batches of 8, 8, 7
    accuracy, loss = top1_and_loss(model, loader, torch.device("cpu"))
    with torch.no_grad():
        logits = model(images)
    assert accuracy == (logits.argmax(-1) == labels).sum().item() / 23 == top1(model, loader, torch.device("cpu"))
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
