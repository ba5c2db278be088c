"""Analytic MACs and parameters of an arch, without building or tracing a model (docs/design.md section 5).

MACs are multiply-accumulates: Linear, Conv, the attention matmuls and BRA's routing matmul count;
norms, activations, softmax, element-wise ops, pooling, gather and top-k do not. Every formula mirrors
a module of `supernets/nas_vit.py`; the token and channel mixers' own formulas are their registry specs'
(`search_spaces/operators.py`). Tests check the totals against FlopCounterMode / 2 and the parameter
count of exported models.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product

from search_spaces import Arch, SearchSpace, StageArch
from search_spaces.arch import OPTIONAL_GENES
from search_spaces.macs import Cost, add, conv, dwconv, linear, norm
from search_spaces.operators import CHANNEL_MIXERS, TOKEN_MIXERS, layer_mixers, live_genes
from search_spaces.space import STEM_STRIDES, StageChoices, broken_rule, conv_out, stem_hidden


@lru_cache(maxsize=1 << 16)
def layer_cost(side: int, genes: StageArch, mixer: str, with_qk: bool, head_dim: int) -> Cost:
    """One transformer layer with token mixer `mixer` on a side x side map; `with_qk=False` is a layer that
    reuses the previous layer's attention (the second layer of a shared cell)."""
    dim = genes.dim
    return add(dwconv(side, dim, 3, bias=True), norm(dim), norm(dim),  # cpe, norms
               TOKEN_MIXERS[mixer].cost(side, genes, with_qk, head_dim), CHANNEL_MIXERS[genes.mixer].cost(side, genes))


def cell_cost(kind: str, side: int, genes: StageArch, head_dim: int) -> Cost:
    return add(*(layer_cost(side, genes, mixer, with_qk, head_dim)
                 for mixer, with_qk in layer_mixers((kind,), genes.attn)))


def _embed_cost(side: int, c_in: int, c_out: int) -> Cost:
    return add(dwconv(side, c_in, 3), conv(side, c_in, c_out, 1), norm(c_out))


def _aggregation_cost(side: int, dim: int, paths: int) -> Cost:
    """Local conv branch and the aggregation conv (a single path is aggregated too)."""
    local = add(conv(side, dim, dim, 1), dwconv(side, dim, 3), conv(side, dim, dim, 1), *[norm(dim)] * 3)
    return add(local, conv(side, (paths + 1) * dim, dim, 1), norm(dim))


@lru_cache(maxsize=1 << 16)
def stage_cost(side_in: int, c_in: int, genes: StageArch, head_dim: int) -> Cost:
    side = conv_out(side_in, genes.pool)
    cells = add(*(cell_cost(kind, side, genes, head_dim) for kind in genes.cells))
    paths = [add(_embed_cost(side, c_in if j == 0 else genes.dim, genes.dim), cells) for j in range(genes.paths)]
    return add(*paths, _aggregation_cost(side, genes.dim, genes.paths))


def stem_cost(space: SearchSpace, dim: int) -> Cost:
    s1, s2 = STEM_STRIDES[space.stem_stride]
    side1 = conv_out(space.img_size, s1)
    side2 = conv_out(side1, s2)
    hidden = stem_hidden(dim)
    return add(conv(side1, space.in_chans, hidden, 3), norm(hidden), conv(side2, hidden, dim, 3), norm(dim))


def head_cost(dim: int, num_classes: int) -> Cost:
    return add(norm(dim), linear(1, dim, num_classes) if num_classes > 0 else (0, 0))


@dataclass(frozen=True)
class CostBreakdown:
    macs: int
    params: int
    parts: tuple[tuple[str, int, int, int], ...]  # (name, token map side, MACs, params)


def arch_cost(arch: Arch, space: SearchSpace, num_classes: int | None = None) -> Cost:
    """(MACs, params) of one image through the arch; the arch must be valid in `space`."""
    return _totals(arch, space, space.num_classes if num_classes is None else num_classes, None)


def arch_cost_breakdown(arch: Arch, space: SearchSpace, num_classes: int | None = None) -> CostBreakdown:
    parts: list[tuple[str, int, int, int]] = []
    macs, params = _totals(arch, space, space.num_classes if num_classes is None else num_classes, parts)
    return CostBreakdown(macs, params, tuple(parts))


def _totals(arch: Arch, space: SearchSpace, num_classes: int, parts: list | None) -> Cost:
    side, c_in = space.stem_output(), arch.stages[0].dim
    costs = [stem_cost(space, c_in)]
    names, sides = ["stem"], [side]
    for i, genes in enumerate(arch.stages):
        costs.append(stage_cost(side, c_in, genes, space.head_dim))
        side, c_in = conv_out(side, genes.pool), genes.dim
        names.append(f"stage {i + 1}")
        sides.append(side)
    costs.append(head_cost(c_in, num_classes))
    names.append("head")
    sides.append(1)
    if parts is not None:
        parts.extend((n, s, m, p) for n, s, (m, p) in zip(names, sides, costs))
    return add(*costs)


# ---- exact extremes of a space ------------------------------------------------------------------

def space_cost_range(space: SearchSpace) -> dict[str, int]:
    """Exact min/max MACs and params over all archs of the space (dynamic programming over stages)."""
    return {f"{bound}_{metric}": _extreme(space, index, bound == "max")[0]
            for metric, index in (("macs", 0), ("params", 1)) for bound in ("min", "max")}


def extreme_arch(space: SearchSpace, largest: bool, metric: str = "macs") -> Arch:
    """The arch of the space with the most (or fewest) MACs or params; ties go to the first found."""
    return _extreme(space, {"macs": 0, "params": 1}[metric], largest)[1]


def _extreme(space: SearchSpace, metric: int, largest: bool) -> tuple[int, Arch]:
    better = (lambda a, b: a > b) if largest else (lambda a, b: a < b)
    # (token map side, dim) after a stage -> (best cost so far, the stages that reach it)
    best: dict[tuple[int, int], tuple[int, tuple[StageArch, ...]]] = {(space.stem_output(), 0): (0, ())}
    for s, choices in enumerate(space.stages):
        nxt: dict[tuple[int, int], tuple[int, tuple[StageArch, ...]]] = {}
        for (side_in, c_in), (so_far, stages) in best.items():
            for pool in choices.pool:
                side = conv_out(side_in, pool)
                for dim in choices.dim:
                    if dim < c_in:
                        continue
                    found = _stage_extreme(side_in, c_in if s else dim, pool, dim, choices, space.head_dim, metric,
                                           largest)
                    if found is None:
                        continue
                    total = so_far + found[0] + (stem_cost(space, dim)[metric] if s == 0 else 0)
                    key = (side, dim)
                    if key not in nxt or better(total, nxt[key][0]):
                        nxt[key] = (total, stages + (found[1],))
        best = nxt
    totals = [(total + head_cost(stages[-1].dim, space.num_classes)[metric], stages)
              for total, stages in best.values()]
    value, stages = totals[0]
    for total, candidate in totals[1:]:
        if better(total, value):
            value, stages = total, candidate
    return value, Arch(space.ref or space.name, stages).canonical()


def _stage_extreme(side_in: int, c_in: int, pool: int, dim: int, choices: StageChoices, head_dim: int, metric: int,
                   largest: bool) -> tuple[int, StageArch] | None:
    """Best cost of one stage over paths, cells and the optional genes, for fixed pool and dim, and the stage
    that has it. Cells are independent given the other genes: each takes its best kind among the valid ones."""
    better = (lambda a, b: a > b) if largest else (lambda a, b: a < b)
    pick = max if largest else min
    found = None
    for fixed, paths, kinds in _stage_options(side_in, c_in, pool, dim, choices, head_dim):
        cost, stage = pick(kinds.values(), key=lambda option: option[0][metric])
        candidate = (fixed[metric] + paths * choices.max_cells * cost[metric], stage)
        if found is None or better(candidate[0], found[0]):
            found = candidate
    return found


@lru_cache(maxsize=1 << 12)
def _stage_options(side_in: int, c_in: int, pool: int, dim: int, choices: StageChoices, head_dim: int) -> tuple:
    """Every (paths, optional genes) of a stage with fixed pool and dim: the cost (MACs, params) of its embeddings
    and aggregation, the paths, and per cell kind valid with those genes the cost of one cell and the stage whose
    cells are all that kind. Per `attn` and `mixer` choice, the genes enumerated are those its operators and the
    cells' fixed token mixers read. Shared by the four extremes of a space (min/max of MACs/params), which is what
    makes `nas space` quick."""
    side = conv_out(side_in, pool)
    combos = []
    for attn in choices.attn:
        for mixer in choices.mixer:
            read = set().union(*(live_genes((cell,), attn, mixer) for cell in choices.cells)) - {"attn", "mixer"}
            names = [g for g in OPTIONAL_GENES if g in read]
            combos += [{**dict.fromkeys(OPTIONAL_GENES), "attn": attn, "mixer": mixer, **dict(zip(names, values))}
                       for values in product(*(getattr(choices, g) for g in names))]
    kind_costs = []  # per combo: {kind: (cost of one cell, its cells)} for the valid kinds
    for combo in combos:
        genes = StageArch(pool, dim, 1, (), **combo)
        kind_costs.append((combo, {kind: cell_cost(kind, side, genes, head_dim) for kind in choices.cells
                                   if broken_rule(StageArch(pool, dim, 1, (kind,), **combo), side) is None}))
    options = []
    for paths in choices.paths:
        fixed = add(*(_embed_cost(side, c_in if j == 0 else dim, dim) for j in range(paths)),
                    _aggregation_cost(side, dim, paths))
        for combo, costs in kind_costs:
            if costs:
                options.append((fixed, paths, {kind: (cost, StageArch(pool, dim, paths, (kind,) * choices.max_cells,
                                                                      **combo)) for kind, cost in costs.items()}))
    return tuple(options)
