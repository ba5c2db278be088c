"""`space_cost_range`: exact min/max MACs and params of a space (docs/design.md section 5)."""
from __future__ import annotations

import numpy as np
import pytest

from nas.cost_model import arch_cost, extreme_arch, space_cost_range
from search_spaces import load_space

KEYS = ("min_macs", "max_macs", "min_params", "max_params")


def test_cost_range_equals_brute_force(enumerated_space):
    space, archs = enumerated_space
    costs = np.array([arch_cost(a, space) for a in archs])  # (archs, 2): MACs, params
    brute = {"min_macs": costs[:, 0].min(), "max_macs": costs[:, 0].max(),
             "min_params": costs[:, 1].min(), "max_params": costs[:, 1].max()}
    assert space_cost_range(space) == {k: int(v) for k, v in brute.items()}


@pytest.mark.parametrize("name", ["tiny-32", "unified-224"])
def test_sampled_costs_lie_within_the_range(name):
    space = load_space(name)
    bounds = space_cost_range(space)
    assert set(bounds) == set(KEYS)
    assert all(isinstance(v, int) and v > 0 for v in bounds.values())
    assert bounds["min_macs"] < bounds["max_macs"] and bounds["min_params"] < bounds["max_params"]
    rng = np.random.default_rng(0)
    for _ in range(500):
        macs, params = arch_cost(space.sample(rng), space)
        assert bounds["min_macs"] <= macs <= bounds["max_macs"]
        assert bounds["min_params"] <= params <= bounds["max_params"]


@pytest.mark.parametrize("name", ["tiny-32", "unified-224"])
def test_extreme_archs_are_valid_and_reach_the_bounds(name):
    space = load_space(name)
    bounds = space_cost_range(space)
    for largest in (True, False):
        for metric, index in (("macs", 0), ("params", 1)):
            arch = extreme_arch(space, largest, metric)
            assert space.validate(arch) == arch
            assert arch_cost(arch, space)[index] == bounds[f"{'max' if largest else 'min'}_{metric}"]
