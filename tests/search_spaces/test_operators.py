"""Sampling, the genetic operators, the genome and the exact space size (DESIGN 6, 8.2, 8.6, 8.9)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from search_spaces import Arch, load_space

SPACES = ["tiny-32", "unified-224"]
DRAWS = 300


def _samples(space, n: int, seed: int) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def _live(space, arch: Arch) -> list[bool]:
    """Per genome position: does the gene matter in `arch` (False where the canonical form sets it None)?"""
    live = []
    for s in arch.stages:
        live += [True] * (3 + len(s.cells))
        live += [v is not None for v in (s.attn, s.topk, s.regions, s.mlp_ratio)]
    assert len(live) == space.genome_length
    return live


def _assert_valid_canonical(space, archs: list[Arch]) -> None:
    for arch in archs:
        assert space.contains(arch), arch
        assert arch == arch.canonical()
        assert arch.space == space.ref


@pytest.mark.parametrize("name", SPACES)
def test_sample_is_valid_and_canonical(name):
    space = load_space(name)
    _assert_valid_canonical(space, _samples(space, DRAWS, 0))


@pytest.mark.parametrize("name", SPACES)
def test_mutate_is_valid_and_canonical(name):
    space = load_space(name)
    rng = np.random.default_rng(1)
    parents = _samples(space, DRAWS, 2)
    for prob in (0.1, 0.5, 1.0):
        _assert_valid_canonical(space, [space.mutate(a, prob, rng) for a in parents])


@pytest.mark.parametrize("name", SPACES)
def test_crossover_is_valid_canonical_and_inherits_every_gene(name):
    space = load_space(name)
    rng = np.random.default_rng(3)
    parents = _samples(space, 2 * DRAWS, 4)
    mixed = 0
    for a, b in zip(parents[::2], parents[1::2]):
        child = space.crossover(a, b, rng)
        _assert_valid_canonical(space, [child])
        ga, gb, gc = space.encode(a), space.encode(b), space.encode(child)
        # genes the child's canonical form drops encode as 0 and come from neither parent necessarily
        assert all(c in (x, y) for c, x, y, live in zip(gc, ga, gb, _live(space, child)) if live)
        mixed += child not in (a, b)
    assert mixed > DRAWS // 2  # a real mix, not a copy of one parent


@pytest.mark.parametrize("name", SPACES)
def test_crossover_of_an_arch_with_itself(name):
    space = load_space(name)
    rng = np.random.default_rng(5)
    for arch in _samples(space, 20, 6):
        assert space.crossover(arch, arch, rng) == arch


@pytest.mark.parametrize("name", SPACES)
def test_same_seed_same_results(name):
    space = load_space(name)

    def run(seed: int) -> list[Arch]:
        rng = np.random.default_rng(seed)
        archs = [space.sample(rng) for _ in range(20)]
        archs += [space.mutate(a, 0.3, rng) for a in archs[:10]]
        archs += [space.crossover(a, b, rng) for a, b in zip(archs[:10], archs[10:20])]
        return archs

    np.random.seed(0)  # global state must not matter
    first = run(7)
    np.random.seed(1)
    assert run(7) == first
    assert run(8) != first


@pytest.mark.parametrize("name", SPACES)
def test_mutate_probability(name):
    space = load_space(name)
    rng = np.random.default_rng(9)
    parents = _samples(space, 200, 10)
    assert all(space.mutate(a, 0.0, rng) == a for a in parents)

    def changed_fraction(prob: float) -> float:
        """Mean fraction of the parent's live genes that the mutation changed."""
        fractions = []
        for a in parents:
            ga, gm, live = space.encode(a), space.encode(space.mutate(a, prob, rng)), _live(space, a)
            fractions.append(sum(x != y for x, y, l in zip(ga, gm, live) if l) / sum(live))
        return float(np.mean(fractions))

    low, high = changed_fraction(0.1), changed_fraction(1.0)
    assert 0.01 < low < 0.2  # about prob * (1 - 1 / choices), raised a little by rejected draws
    assert high > 0.45  # every gene redrawn: most change (2-3 choices a gene)
    assert sum(space.mutate(a, 1.0, rng) != a for a in parents) > 0.95 * len(parents)


@pytest.mark.parametrize("prob", [-0.1, 1.5, float("nan")])
def test_mutate_rejects_bad_probability(prob):
    space = load_space("tiny-32")
    arch = space.sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"prob must be in \[0, 1\]"):
        space.mutate(arch, prob, np.random.default_rng(0))


def test_rejection_loops_are_bounded():
    space = load_space("tiny-32")
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError, match=r"sample: no valid arch of space 'tiny-32' in 0 tries"):
        space.sample(rng, max_tries=0)
    with pytest.raises(RuntimeError, match=r"mutate: no valid arch"):
        space.mutate(space.sample(rng), 0.5, rng, max_tries=0)


@pytest.mark.parametrize("name", SPACES)
def test_encode_decode_round_trip(name):
    space = load_space(name)
    for arch in _samples(space, DRAWS, 11):
        genome = space.encode(arch)
        assert len(genome) == space.genome_length
        assert all(0 <= g < len(c) for g, c in zip(genome, space.genome_choices))
        assert space.decode(genome) == arch
        assert space.decode(np.asarray(genome)) == arch
        assert space.encode(space.decode(genome)) == genome


def test_decode_rejects_wrong_length():
    space = load_space("tiny-32")
    with pytest.raises(ValueError, match=rf"genome has 3 genes; space 'tiny-32' expects {space.genome_length}"):
        space.decode([0, 0, 0])


@pytest.mark.parametrize("name", SPACES)
def test_sampling_covers_every_choice(name):
    space = load_space(name)
    seen = [set() for _ in range(space.genome_length)]
    paths = Counter()
    archs = _samples(space, 3000, 12)
    for arch in archs:
        for pos, (g, live) in enumerate(zip(space.encode(arch), _live(space, arch))):
            if live:
                seen[pos].add(g)
        paths.update(s.paths for s in arch.stages)
    for pos, choices in enumerate(space.genome_choices):
        assert seen[pos] == set(range(len(choices))), (pos, choices, seen[pos])
    # `paths` takes part in no constraint, so its draws are uniform
    for p in (1, 2, 3):
        assert abs(paths[p] / (4 * len(archs)) - 1 / 3) < 0.03


def test_size_equals_brute_force_count(enumerated_space):
    space, archs = enumerated_space
    assert len(archs) > 100
    assert space.size == len(archs)


def test_sample_reaches_only_enumerated_archs(enumerated_space):
    space, archs = enumerated_space
    sampled = set(_samples(space, 300, 13))
    assert sampled <= archs
    assert len(sampled) > 50
