"""Sampling, the genetic operators, the genome and the exact space size (docs/design.md sections 2 and 9.4)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from search_spaces import Arch, StageArch, load_space
from search_spaces.arch import OPTIONAL_GENES
from search_spaces.operators import live_genes

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
        live += [getattr(s, gene) is not None for gene in OPTIONAL_GENES]
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
    for pos, (name, choices) in enumerate(zip(space.genome_names, space.genome_choices)):
        stage, gene = space.stages[int(name[1]) - 1], name.split(".")[1]
        read = set().union(*(live_genes((cell,), attn, "mlp") for cell in stage.cells for attn in stage.attn))
        if gene in OPTIONAL_GENES and gene not in read:  # no operator of the stage reads it: always inert
            assert not seen[pos]
            continue
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


# ---- genes revived by the operators --------------------------------------------------------------
# A gene inert in the canonical form (topk/regions of an `mhsa` stage; attn, topk, regions, mlp_ratio of an
# all-`skip` stage) is None and encodes as 0. When mutation revives it, it must be drawn like any other gene
# (uniform, invalid draws rejected), not come back as choices[0].

REVIVALS = 4000


def _stage(pool=1, dim=16, cells=("layer",), attn="mhsa", topk=None, regions=None, mlp_ratio=2.0) -> StageArch:
    return StageArch(pool, dim, 1, cells, attn, topk, regions, mlp_ratio)


def _tiny_arch(space, first: StageArch) -> Arch:
    """A tiny-32 arch with the given stage 1; its map side is 8 or 4 whatever the pools, so every `regions`
    choice (at most 4) is valid there and only topk <= regions^2 constrains the revived genes."""
    rest = (_stage(dim=32), _stage(dim=48, cells=("layer", "skip")), _stage(dim=64))
    arch = Arch(space.ref, (first, *rest))
    assert space.contains(arch) and max(space.genome_choices[space.genome_names.index("s1.regions")]) <= 4
    return arch


def _revival_law(choices, attn: tuple[str, ...]) -> Counter:
    """Weight of every canonical (attn, topk, regions, mlp_ratio) of a revived stage 1: each gene uniform over
    its choices, the draws with topk > regions^2 rejected (every regions choice fits the map, see above)."""
    law = Counter()
    for a in attn:
        for k in choices.topk:
            for r in choices.regions:
                for m in choices.mlp_ratio:
                    if a == "mhsa":
                        law[(a, None, None, m)] += 1
                    elif k <= r * r:
                        law[(a, k, r, m)] += 1
    return law


def _assert_follows(observed: Counter, law: Counter) -> None:
    """Chi-square goodness of fit; p < 0.001 fails (the seeds are fixed, so the outcome is too)."""
    assert set(observed) <= set(law), set(observed) - set(law)
    keys = sorted(law, key=repr)
    counts = np.array([observed[k] for k in keys], dtype=float)
    expected = np.array([law[k] for k in keys], dtype=float)
    expected *= counts.sum() / expected.sum()
    assert expected.min() >= 20, expected.min()  # enough revivals for the chi-square approximation
    p = stats.chisquare(counts, expected).pvalue
    assert p > 1e-3, (p, dict(zip(keys, counts)), dict(zip(keys, expected)))


def test_mutate_revives_topk_and_regions_uniformly():
    """mhsa -> bra: the revived (topk, regions) is uniform over the valid pairs."""
    space = load_space("tiny-32")
    parent = _tiny_arch(space, _stage())
    rng = np.random.default_rng(20)
    revived = Counter()
    for _ in range(REVIVALS):
        s = space.mutate(parent, 0.5, rng).stages[0]
        if s.attn == "bra":
            revived[(s.topk, s.regions)] += 1
    # mlp_ratio is live in the parent, so it is left out: every valid (topk, regions) pair has weight 1
    law = Counter({(k, r): 1 for _, k, r, _ in _revival_law(space.stages[0], ("bra",))})
    _assert_follows(revived, law)


def test_mutate_revives_the_genes_of_an_all_skip_stage_uniformly():
    """skip -> layer: the revived (attn, topk, regions, mlp_ratio) follows the uniform-with-rejection law."""
    space = load_space("tiny-32")
    parent = _tiny_arch(space, _stage(cells=("skip",), attn=None, mlp_ratio=None))
    rng = np.random.default_rng(21)
    revived = Counter()
    for _ in range(REVIVALS):
        s = space.mutate(parent, 0.5, rng).stages[0]
        if s.has_layers:
            revived[(s.attn, s.topk, s.regions, s.mlp_ratio)] += 1
    _assert_follows(revived, _revival_law(space.stages[0], space.stages[0].attn))


def test_crossover_takes_a_gene_inert_in_one_parent_from_the_other():
    """A gene inert in one parent has no value there, so a child in which it is live has the other parent's
    value: every live gene of a child is inherited from a parent in which it is live (never choices[0])."""
    space = load_space("tiny-32")
    rng = np.random.default_rng(22)
    skip = _tiny_arch(space, _stage(cells=("skip",), attn=None, mlp_ratio=None))
    mhsa = _tiny_arch(space, _stage(mlp_ratio=4.0))
    bra = _tiny_arch(space, _stage(attn="bra", topk=4, regions=3, mlp_ratio=4.0))
    for inert, live in ((skip, bra), (mhsa, bra), (skip, mhsa)):
        want = live.stages[0]
        for a, b in ((inert, live), (live, inert)):
            kept = 0
            for _ in range(300):
                s = space.crossover(a, b, rng).stages[0]
                if s.has_layers and s.attn == want.attn:
                    # the genes of stage 1 inert in `inert` (attn, mlp_ratio of `skip`; topk, regions of `mhsa`)
                    # can only come from `live`
                    assert (s.topk, s.regions, s.mlp_ratio) == (want.topk, want.regions, want.mlp_ratio), (a, b, s)
                    kept += 1
            assert kept > 50  # the case was reached often


def test_crossover_live_genes_come_from_parents_where_they_are_live():
    """Over random parents: every live gene of a child equals that gene of a parent in which it is live."""
    space = load_space("tiny-32")
    rng = np.random.default_rng(23)
    parents = _samples(space, 2 * DRAWS, 24)
    for a, b in zip(parents[::2], parents[1::2]):
        child = space.crossover(a, b, rng)
        ga, gb, gc = space.encode(a), space.encode(b), space.encode(child)
        for c, x, y, lx, ly, lc in zip(gc, ga, gb, _live(space, a), _live(space, b), _live(space, child)):
            if lc:
                assert (lx and c == x) or (ly and c == y)
