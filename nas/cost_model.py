"""Analytic MACs and parameters of an arch, without building or tracing a model (docs/design.md section 5).

MACs are multiply-accumulates: Linear, Conv, the attention matmuls and BRA's routing matmul count;
norms, activations, softmax, element-wise ops, pooling, gather and top-k do not. Every formula mirrors
a module of `supernets/nas_vit.py`; tests check the totals against FlopCounterMode / 2 and the
parameter count of exported models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from search_spaces import Arch, SearchSpace, StageArch
from search_spaces.space import STEM_STRIDES, StageChoices, conv_out, stem_hidden

Cost = tuple[int, int]  # (MACs, params)


def _add(*costs: Cost) -> Cost:
    return sum(c[0] for c in costs), sum(c[1] for c in costs)


def _linear(tokens: int, c_in: int, c_out: int, bias: bool = True) -> Cost:
    return tokens * c_in * c_out, c_in * c_out + (c_out if bias else 0)


def _conv(side: int, c_in: int, c_out: int, kernel: int) -> Cost:  # no bias; `side` of the output
    return side * side * c_in * c_out * kernel * kernel, c_in * c_out * kernel * kernel


def _dwconv(side: int, c: int, kernel: int, bias: bool = False) -> Cost:
    return side * side * c * kernel * kernel, c * kernel * kernel + (c if bias else 0)


def _norm(c: int) -> Cost:
    return 0, 2 * c


@lru_cache(maxsize=1 << 16)
def layer_cost(side: int, dim: int, hidden: int, attn: str, topk: int | None, regions: int | None,
               with_qk: bool) -> Cost:
    """One transformer layer on a side x side map; `with_qk=False` is the second layer of a shared cell."""
    n = side * side
    parts = [_dwconv(side, dim, 3, bias=True), _norm(dim), _norm(dim),
             _linear(n, dim, hidden), _linear(n, hidden, dim), _linear(n, dim, dim)]  # cpe, norms, mlp, proj
    if attn == "mhsa":
        parts.append(_linear(n, dim, dim))  # v
        if with_qk:
            parts += [_linear(n, dim, dim), _linear(n, dim, dim), (2 * n * n * dim, 0)]  # q, k, QK^T and AV
        else:
            parts.append((n * n * dim, 0))  # AV with the reused probabilities
        return _add(*parts)
    # projections and LCE act on the map; the kernel zero-pads q, k, v to a multiple of S and attends on that
    padded = (math.ceil(side / regions) * regions) ** 2
    gathered = topk * padded // (regions * regions)  # keys of the k routed regions
    parts += [_linear(n, dim, dim), _dwconv(side, dim, 5, bias=True)]  # v, LCE
    if with_qk:
        parts += [_linear(n, dim, dim), _linear(n, dim, dim),  # q, k
                  (regions ** 4 * dim, 0), (2 * padded * gathered * dim, 0)]  # routing, QK^T and AV
    else:
        parts.append((padded * gathered * dim, 0))
    return _add(*parts)


def cell_cost(kind: str, side: int, genes: StageArch) -> Cost:
    if kind == "skip":
        return 0, 0
    args = (side, genes.dim, genes.mlp_hidden(), genes.attn, genes.topk, genes.regions)
    first = layer_cost(*args, True)
    return _add(first, layer_cost(*args, False)) if kind == "shared" else first


def _embed_cost(side: int, c_in: int, c_out: int) -> Cost:
    return _add(_dwconv(side, c_in, 3), _conv(side, c_in, c_out, 1), _norm(c_out))


def _aggregation_cost(side: int, dim: int, paths: int) -> Cost:
    """Local conv branch and the aggregation conv (a single path is aggregated too)."""
    local = _add(_conv(side, dim, dim, 1), _dwconv(side, dim, 3), _conv(side, dim, dim, 1), *[_norm(dim)] * 3)
    return _add(local, _conv(side, (paths + 1) * dim, dim, 1), _norm(dim))


@lru_cache(maxsize=1 << 16)
def stage_cost(side_in: int, c_in: int, genes: StageArch) -> Cost:
    side = conv_out(side_in, genes.pool)
    cells = _add(*(cell_cost(kind, side, genes) for kind in genes.cells))
    paths = [_add(_embed_cost(side, c_in if j == 0 else genes.dim, genes.dim), cells) for j in range(genes.paths)]
    return _add(*paths, _aggregation_cost(side, genes.dim, genes.paths))


def stem_cost(space: SearchSpace, dim: int) -> Cost:
    s1, s2 = STEM_STRIDES[space.stem_stride]
    side1 = conv_out(space.img_size, s1)
    side2 = conv_out(side1, s2)
    hidden = stem_hidden(dim)
    return _add(_conv(side1, space.in_chans, hidden, 3), _norm(hidden), _conv(side2, hidden, dim, 3), _norm(dim))


def head_cost(dim: int, num_classes: int) -> Cost:
    return _add(_norm(dim), _linear(1, dim, num_classes) if num_classes > 0 else (0, 0))


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
        costs.append(stage_cost(side, c_in, genes))
        side, c_in = conv_out(side, genes.pool), genes.dim
        names.append(f"stage {i + 1}")
        sides.append(side)
    costs.append(head_cost(c_in, num_classes))
    names.append("head")
    sides.append(1)
    if parts is not None:
        parts.extend((n, s, m, p) for n, s, (m, p) in zip(names, sides, costs))
    return _add(*costs)


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
                    found = _stage_extreme(side_in, c_in if s else dim, pool, dim, choices, metric, largest)
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


def _stage_extreme(side_in: int, c_in: int, pool: int, dim: int, choices: StageChoices, metric: int,
                   largest: bool) -> tuple[int, StageArch] | None:
    """Best cost of one stage over paths, cells, attention genes and mlp_ratio, for fixed pool and dim,
    and the stage that has it. Cells are independent given the other genes: each takes its best kind."""
    better = (lambda a, b: a > b) if largest else (lambda a, b: a < b)
    pick = max if largest else min
    found = None
    for fixed, genes, kind_costs in _stage_options(side_in, c_in, pool, dim, choices):
        if genes.attn is None:  # all cells skip
            candidate = (fixed[metric], genes)
        else:
            kind = pick(kind_costs, key=lambda k: kind_costs[k][metric])
            candidate = (fixed[metric] + genes.paths * choices.max_cells * kind_costs[kind][metric],
                         StageArch(pool, dim, genes.paths, (kind,) * choices.max_cells, genes.attn, genes.topk,
                                   genes.regions, genes.mlp_ratio))
        if found is None or better(candidate[0], found[0]):
            found = candidate
    return found


@lru_cache(maxsize=1 << 12)
def _stage_options(side_in: int, c_in: int, pool: int, dim: int, choices: StageChoices) -> tuple:
    """Every (paths, attention genes, mlp_ratio) of a stage with fixed pool and dim: the cost (MACs, params) of its
    embeddings and aggregation, its genes, and the cost of one cell of each kind. Shared by the four extremes of a
    space (min/max of MACs/params), which is what makes `nas space` quick."""
    side = conv_out(side_in, pool)
    attn_genes = [("mhsa", None, None)] if "mhsa" in choices.attn else []
    if "bra" in choices.attn:
        attn_genes += [("bra", k, s) for s in choices.regions for k in choices.topk if s <= side and k <= s * s]
    options = []
    for paths in choices.paths:
        fixed = _add(*(_embed_cost(side, c_in if j == 0 else dim, dim) for j in range(paths)),
                     _aggregation_cost(side, dim, paths))
        if "skip" in choices.cells:  # all cells skip: the other genes change nothing
            options.append((fixed, StageArch(pool, dim, paths, ("skip",) * choices.max_cells, None, None, None, None),
                            {}))
        for attn, topk, regions in attn_genes:
            for ratio in choices.mlp_ratio:
                genes = StageArch(pool, dim, paths, (), attn, topk, regions, ratio)
                options.append((fixed, genes, {kind: cell_cost(kind, side, genes) for kind in choices.cells}))
    return tuple(options)
