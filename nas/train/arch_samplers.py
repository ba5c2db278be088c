"""Which subnets a training step trains (docs/design.md section 6).

The archs of step t come from `numpy.random.default_rng([seed, t])`: every DDP rank builds the same
subnets, and a resumed run samples what the uninterrupted run would have, with no RNG state to save.
"""
from __future__ import annotations

import numpy as np

from nas.cost_model import arch_cost, extreme_arch
from search_spaces import Arch, SearchSpace

SAMPLERS = ("uniform", "flops-uniform", "sandwich")


def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


class UniformSampler:
    """SPOS: one arch per step, every gene uniform (invalid draws rejected)."""

    def __init__(self, space: SearchSpace, seed: int):
        self.space, self.seed = space, seed

    def archs(self, step: int) -> list[Arch]:
        return [self.space.sample(step_rng(self.seed, step))]


class FlopsUniformSampler:
    """One arch per step, uniform over MAC bins, then uniform within the bin.

    Uniform gene sampling concentrates on mid-sized nets; this spreads training over the cost range.
    Bins are equal-width in log-MACs between the 1st and 99th percentile of 2,000 uniform samples
    (a fixed draw, so every rank and every resume gets the same bins)."""

    def __init__(self, space: SearchSpace, seed: int, bins: int = 8, max_tries: int = 2000):
        self.space, self.seed, self.max_tries = space, seed, max_tries
        rng = np.random.default_rng([seed, 2**31])
        log_macs = np.log([arch_cost(space.sample(rng), space)[0] for _ in range(2000)])
        low, high = np.percentile(log_macs, [1, 99])
        self.edges = np.linspace(low, high, bins + 1)
        self.edges[0], self.edges[-1] = -np.inf, np.inf

    def archs(self, step: int) -> list[Arch]:
        rng = step_rng(self.seed, step)
        target = rng.integers(len(self.edges) - 1)
        for _ in range(self.max_tries):
            arch = self.space.sample(rng)
            if self.edges[target] <= np.log(arch_cost(arch, self.space)[0]) < self.edges[target + 1]:
                return [arch]
        raise RuntimeError(f"flops-uniform: no arch in MAC bin {target} after {self.max_tries} tries")


class SandwichSampler:
    """BigNAS's sandwich rule: the largest and the smallest subnet (by MACs) and a uniform one, each step."""

    def __init__(self, space: SearchSpace, seed: int):
        self.uniform = UniformSampler(space, seed)
        self.largest, self.smallest = extreme_arch(space, largest=True), extreme_arch(space, largest=False)

    def archs(self, step: int) -> list[Arch]:
        return [self.largest, self.smallest, *self.uniform.archs(step)]


class LargestFirst:
    """Once-for-all's warm-up: the first `steps` steps train the largest subnet alone, then `inner` samples."""

    def __init__(self, inner, space: SearchSpace, steps: int):
        self.inner, self.steps, self.largest = inner, steps, extreme_arch(space, largest=True)

    def archs(self, step: int) -> list[Arch]:
        return [self.largest] if step < self.steps else self.inner.archs(step)


def build_sampler(name: str, space: SearchSpace, seed: int, warmup_largest_steps: int = 0):
    """The sampler called `name`; with `warmup_largest_steps`, preceded by that many steps of the largest subnet."""
    if name == "uniform":
        sampler = UniformSampler(space, seed)
    elif name == "flops-uniform":
        sampler = FlopsUniformSampler(space, seed)
    elif name == "sandwich":
        sampler = SandwichSampler(space, seed)
    else:
        raise ValueError(f"--sampler {name!r}: choose from {list(SAMPLERS)}")
    return LargestFirst(sampler, space, warmup_largest_steps) if warmup_largest_steps else sampler
