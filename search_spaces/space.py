"""A search space: the choices of every gene, validation, sampling and the genetic operators."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from itertools import combinations, product
from math import comb

import numpy as np

from search_spaces.arch import OPTIONAL_GENES, Arch, StageArch
from search_spaces.operators import CELL_KINDS, CHANNEL_MIXERS, TOKEN_MIXERS, layer_mixers, live_genes, roles

STEM_STRIDES = {1: (1, 1), 2: (2, 1), 4: (2, 2)}
CONV_NORMS = ("ln", "bn")
POOLS = (1, 2)
PATHS = (1, 2, 3)


def stem_hidden(dim: int) -> int:
    """Width of the stem's first conv for a first stage of `dim`: C/2, as BiFormer's and MPViT's stems."""
    return dim // 2


def conv_out(size: int, stride: int) -> int:
    """Output size of a 3x3 convolution with padding 1 (the stem and the pooling convs)."""
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class StageChoices:
    pool: tuple[int, ...]
    dim: tuple[int, ...]
    paths: tuple[int, ...]
    max_cells: int
    cells: tuple[str, ...]
    attn: tuple[str, ...]
    topk: tuple[int, ...]
    regions: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    window: tuple[int, ...] = (7,)
    mixer: tuple[str, ...] = ("mlp",)

    def gene_choices(self) -> list[tuple]:
        """Choices of every genome position of this stage, in genome order."""
        return [self.pool, self.dim, self.paths, *([self.cells] * self.max_cells),
                *(getattr(self, gene) for gene in OPTIONAL_GENES)]

    def gene_names(self) -> list[str]:
        """Names of the genome positions of this stage, in genome order (cells numbered from 1)."""
        return ["pool", "dim", "paths", *(f"cell{j + 1}" for j in range(self.max_cells)), *OPTIONAL_GENES]


@dataclass(frozen=True)
class SearchSpace:
    """Choices of every gene of an arch plus the fixed facts (input size, head_dim, classes).

    `ref` is how the space was found (its name for a built-in space, else its YAML path); archs
    sampled from it carry it, so an arch YAML is enough to rebuild the space.
    """

    name: str
    img_size: int
    in_chans: int
    num_classes: int
    head_dim: int
    stem_stride: int
    conv_norm: str
    stages: tuple[StageChoices, ...]
    ref: str = ""

    # ---- structure ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("ref")
        d["stages"] = [{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()} for s in d["stages"]]
        return d

    @cached_property
    def hash(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @cached_property
    def genome_choices(self) -> list[tuple]:
        """The choices of every genome position (`encode` gives indices into them)."""
        return [c for stage in self.stages for c in stage.gene_choices()]

    @cached_property
    def genome_names(self) -> list[str]:
        """A name per genome position: 's1.pool', 's1.dim', ..., 's4.mlp_ratio'."""
        return [f"s{i + 1}.{name}" for i, stage in enumerate(self.stages) for name in stage.gene_names()]

    @property
    def genome_length(self) -> int:
        return len(self.genome_choices)

    def stem_output(self) -> int:
        a, b = STEM_STRIDES[self.stem_stride]
        return conv_out(conv_out(self.img_size, a), b)

    def stage_sizes(self, arch: Arch) -> list[int]:
        """Side of the (square) token map of every stage."""
        size, sizes = self.stem_output(), []
        for stage in arch.stages:
            size = conv_out(size, stage.pool)
            sizes.append(size)
        return sizes

    # ---- validation --------------------------------------------------------------------------

    def validate(self, arch: Arch) -> Arch:
        """Return the canonical form of `arch`, or raise ValueError naming the gene, value and choices."""
        if arch.space not in (self.name, self.ref):
            raise ValueError(f"arch belongs to space {arch.space!r}, not to {self.name!r}")
        if len(arch.stages) != len(self.stages):
            raise ValueError(f"arch has {len(arch.stages)} stages; space {self.name!r} has {len(self.stages)}")
        prev_dim, size = 0, self.stem_output()
        for i, (stage, choices) in enumerate(zip(arch.stages, self.stages)):
            where = f"stage {i + 1}"
            _check_gene(where, "pool", stage.pool, choices.pool)
            _check_gene(where, "dim", stage.dim, choices.dim)
            _check_gene(where, "paths", stage.paths, choices.paths)
            if len(stage.cells) != choices.max_cells:
                raise ValueError(f"{where}: gene 'cells' must have {choices.max_cells} entries, got {list(stage.cells)}")
            for j, cell in enumerate(stage.cells):
                _check_gene(where, f"cells[{j}]", cell, choices.cells)
            if stage.dim < prev_dim:
                raise ValueError(f"{where}: gene 'dim' = {stage.dim} is smaller than the previous stage's {prev_dim}; "
                                 "dim never shrinks from one stage to the next")
            prev_dim, size = stage.dim, conv_out(size, stage.pool)
            if stage.has_layers:
                _check_operators(where, stage, choices, size)
        return arch.canonical()

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except ValueError:
            return False
        return True

    # ---- genome ------------------------------------------------------------------------------

    def encode(self, arch: Arch) -> list[int]:
        """Fixed-length genome: the index of every gene in its choices (None -> 0)."""
        return self._encode_inert(arch)[0].tolist()

    def _encode_inert(self, arch: Arch) -> tuple[np.ndarray, np.ndarray]:
        """The genome of `arch` and, per position, whether the gene is inert there (None in the canonical
        form; its 0 in the genome is a placeholder, not a value)."""
        values = []
        for stage in self.validate(arch).stages:
            values += [stage.pool, stage.dim, stage.paths, *stage.cells, *(getattr(stage, g) for g in OPTIONAL_GENES)]
        genome = [0 if v is None else choices.index(v) for v, choices in zip(values, self.genome_choices)]
        return np.array(genome, dtype=np.int64), np.array([v is None for v in values])

    def decode(self, genome: list[int] | np.ndarray) -> Arch:
        """The canonical arch of a genome; it may be outside the space (see `contains`)."""
        if len(genome) != self.genome_length:
            raise ValueError(f"genome has {len(genome)} genes; space {self.name!r} expects {self.genome_length}")
        for pos, (i, choices) in enumerate(zip(genome, self.genome_choices)):
            if isinstance(i, bool) or int(i) != i or not 0 <= i < len(choices):
                raise ValueError(f"genome position {pos} = {i!r}; allowed: an index in 0..{len(choices) - 1}")
        values = [choices[int(i)] for i, choices in zip(genome, self.genome_choices)]
        stages, pos = [], 0
        for choices in self.stages:
            pool, dim, paths = values[pos:pos + 3]
            cells = tuple(values[pos + 3:pos + 3 + choices.max_cells])
            pos += 3 + choices.max_cells
            optional = dict(zip(OPTIONAL_GENES, values[pos:pos + len(OPTIONAL_GENES)]))
            stages.append(StageArch(pool, dim, paths, cells, **optional))
            pos += len(OPTIONAL_GENES)
        return Arch(self.ref or self.name, tuple(stages)).canonical()

    # ---- sampling and the genetic operators --------------------------------------------------

    def sample(self, rng: np.random.Generator, max_tries: int = 1000) -> Arch:
        """A uniformly random valid arch: every gene uniform, invalid draws rejected."""
        sizes = [len(c) for c in self.genome_choices]
        return self._first_valid(lambda: rng.integers(0, sizes), max_tries, "sample")

    def mutate(self, arch: Arch, prob: float, rng: np.random.Generator, max_tries: int = 1000) -> Arch:
        """Redraw every gene with probability `prob`, until the result is valid.

        A gene inert in `arch` (None in its canonical form) has no value to keep, so it is always redrawn:
        where the mutation revives it (mhsa -> bra, skip -> layer) it is uniform like a sampled gene, not
        choices[0]; where it stays inert the canonical form drops it again."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        genome, inert = self._encode_inert(arch)
        sizes = np.array([len(c) for c in self.genome_choices])

        def draw() -> np.ndarray:
            redraw = (rng.random(len(genome)) < prob) | inert
            return np.where(redraw, rng.integers(0, sizes), genome)

        return self._first_valid(draw, max_tries, "mutate")

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator, max_tries: int = 1000) -> Arch:
        """Take every gene from `a` or `b` with equal probability, until the result is valid.

        A gene inert in one parent (None in its canonical form) has no value there, so it comes from the other
        parent whichever the coin picks: every live gene of a child is inherited from a parent in which it is
        live, never made up as choices[0]. A gene inert in both is drawn uniformly (for canonical parents it
        stays inert in the child, whose canonical form drops it)."""
        ga, inert_a = self._encode_inert(a)
        gb, inert_b = self._encode_inert(b)
        ga, gb = np.where(inert_a, gb, ga), np.where(inert_b, ga, gb)
        both = inert_a & inert_b
        sizes = np.array([len(c) for c in self.genome_choices])

        def draw() -> np.ndarray:
            child = np.where(rng.random(len(ga)) < 0.5, ga, gb)
            return np.where(both, rng.integers(0, sizes), child)

        return self._first_valid(draw, max_tries, "crossover")

    def _first_valid(self, draw, max_tries: int, what: str) -> Arch:
        for _ in range(max_tries):
            arch = self.decode(draw())
            if self.contains(arch):
                return arch
        raise RuntimeError(f"{what}: no valid arch of space {self.name!r} in {max_tries} tries")

    # ---- size --------------------------------------------------------------------------------

    @cached_property
    def size(self) -> int:
        """Number of distinct canonical archs, by dynamic programming over (token map side, dim)."""
        counts = {(self.stem_output(), 0): 1}
        for choices in self.stages:
            nxt: dict[tuple[int, int], int] = {}
            for (size, prev_dim), n in counts.items():
                for pool in choices.pool:
                    side = conv_out(size, pool)
                    for dim in choices.dim:
                        per_stage = len(choices.paths) * _cell_configs(choices, side, dim)
                        if dim >= prev_dim and per_stage:
                            nxt[(side, dim)] = nxt.get((side, dim), 0) + n * per_stage
            counts = nxt
        return sum(counts.values())


@lru_cache(maxsize=1 << 12)
def _cell_configs(choices: StageChoices, side: int, dim: int) -> int:
    """Canonical (cells, optional genes) combinations of a stage at this map side and dim.

    Cell tuples are grouped by the set of kinds they hold (which decides the live genes), counted by
    inclusion-exclusion; each group's live genes are enumerated against its token mixers' rules."""
    kinds, m = choices.cells, choices.max_cells
    total = 0
    for r in range(1, len(kinds) + 1):
        for present in combinations(kinds, r):
            tuples = sum((-1) ** (r - j) * comb(r, j) * j ** m for j in range(r + 1))  # onto `present`
            total += tuples * _gene_configs(choices, present, side, dim)
    return total


def _gene_configs(choices: StageChoices, cells: tuple[str, ...], side: int, dim: int) -> int:
    """Valid combinations of the live optional genes of a stage holding exactly these cell kinds."""
    if not any(roles(c) for c in cells):
        return 1
    count = 0
    for attn in choices.attn if "attn" in live_genes(cells, None, None) else (choices.attn[0],):
        for mixer in choices.mixer:
            live = [g for g in OPTIONAL_GENES if g in live_genes(cells, attn, mixer) and g not in ("attn", "mixer")]
            for values in product(*(getattr(choices, g) for g in live)):
                genes = {**dict.fromkeys(OPTIONAL_GENES), "attn": attn, "mixer": mixer, **dict(zip(live, values))}
                count += broken_rule(StageArch(1, dim, 1, cells, **genes), side) is None
    return count


def _check_operators(where: str, stage: StageArch, choices: StageChoices, side: int) -> None:
    """The live optional genes of a stage with layers, then the rule of each of its token mixers."""
    live = live_genes(stage.cells, None, None)  # without attn: whether a cell reads it
    if "attn" in live:
        _check_gene(where, "attn", stage.attn, choices.attn)
    mixer = "mlp" if stage.mixer is None else stage.mixer
    _check_gene(where, "mixer", mixer, choices.mixer)
    live = live_genes(stage.cells, stage.attn, mixer)
    for gene in OPTIONAL_GENES:
        if gene in live and gene not in ("attn", "mixer"):
            _check_gene(where, gene, getattr(stage, gene), getattr(choices, gene))
    broken = broken_rule(stage, side)
    if broken:
        raise ValueError(f"{where}: {broken}")


def broken_rule(stage: StageArch, side: int) -> str | None:
    """The first operator rule that a stage (its genes checked against their choices) breaks on a map of this
    side, or None: a reusing layer needs a token mixer that keeps its attention, and each mixer's own rule."""
    for cell in stage.cells:
        for name, with_qk in layer_mixers((cell,), stage.attn):
            if not with_qk and not TOKEN_MIXERS[name].reusable:
                return (f"cell {cell!r} reuses the attention of {name!r}, which keeps none to reuse; "
                        f"allowed with {name!r}: cells without a reusing layer")
    for name in dict.fromkeys(m for m, _ in layer_mixers(stage.cells, stage.attn)):
        broken = TOKEN_MIXERS[name].check(stage, side)
        if broken:
            return broken
    return None


def _check_gene(where: str, gene: str, value: object, allowed: tuple) -> None:
    wrong_type = isinstance(value, bool) or (isinstance(allowed[0], int) and not isinstance(value, int))
    if wrong_type or value not in allowed:
        raise ValueError(f"{where}: gene '{gene}' = {value!r} is not allowed; allowed: {list(allowed)}")


def space_from_dict(data: object, ref: str) -> SearchSpace:
    """Build and check a space from its YAML mapping; errors name the field and what is allowed."""
    if not isinstance(data, dict):
        raise ValueError(f"space {ref}: expected a mapping, got {type(data).__name__}")
    fields = {"name", "img_size", "in_chans", "num_classes", "head_dim", "stem_stride", "conv_norm", "stages"}
    unknown, missing = set(data) - fields, fields - set(data) - {"in_chans", "conv_norm"}
    if unknown:
        raise ValueError(f"space {ref}: unknown field(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    if missing:
        raise ValueError(f"space {ref}: missing field(s) {sorted(missing)}")
    if not isinstance(data["name"], str) or not data["name"]:
        raise ValueError(f"space {ref}: 'name' must be a non-empty string, got {data['name']!r}")
    for key in ("img_size", "num_classes", "head_dim"):
        if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 1:
            raise ValueError(f"space {ref}: '{key}' must be a positive integer, got {data[key]!r}")
    if isinstance(data["stem_stride"], bool) or data["stem_stride"] not in STEM_STRIDES:
        raise ValueError(f"space {ref}: 'stem_stride' = {data['stem_stride']!r}; allowed: {list(STEM_STRIDES)}")
    conv_norm = data.get("conv_norm", "ln")
    if conv_norm not in CONV_NORMS:
        raise ValueError(f"space {ref}: 'conv_norm' = {conv_norm!r}; allowed: {list(CONV_NORMS)}")
    if not isinstance(data["stages"], list) or len(data["stages"]) != 4:
        raise ValueError(f"space {ref}: 'stages' must be a list of 4 stage mappings")
    head_dim = data["head_dim"]
    stages = tuple(_stage_choices(s, head_dim, f"space {ref}: stage {i + 1}") for i, s in enumerate(data["stages"]))
    space = SearchSpace(str(data["name"]), data["img_size"], int(data.get("in_chans", 3)), data["num_classes"],
                        head_dim, data["stem_stride"], conv_norm, stages, ref)
    if space.size == 0:
        raise ValueError(f"space {ref}: no arch satisfies the constraints (dim never shrinks; regions <= map side)")
    return space


def _stage_choices(data: object, head_dim: int, where: str) -> StageChoices:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of gene choices")
    genes = {"pool": POOLS, "dim": None, "paths": PATHS, "max_cells": None, "cells": CELL_KINDS,
             "attn": TOKEN_MIXERS, "topk": None, "regions": None, "mlp_ratio": None, "window": None,
             "mixer": CHANNEL_MIXERS}
    defaults = {"topk": [1], "regions": [1], "window": [7], "mixer": ["mlp"]}
    unknown = set(data) - set(genes)
    if unknown:
        raise ValueError(f"{where}: unknown gene(s) {sorted(unknown)}; allowed: {list(genes)}")
    out = {}
    for gene, allowed in genes.items():
        if gene == "max_cells":
            value = data.get(gene)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: 'max_cells' must be a positive integer, got {value!r}")
            out[gene] = value
            continue
        value = data.get(gene, defaults.get(gene))
        kind = str if gene in ("cells", "attn", "mixer") else (int, float) if gene == "mlp_ratio" else int
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"{where}: '{gene}' must be a non-empty list of {_kind_name(kind)}, got {value!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"{where}: '{gene}' choices must be distinct, got {value!r}")
        if allowed is not None and not set(value) <= set(allowed):
            raise ValueError(f"{where}: '{gene}' = {value}; each choice must be one of {list(allowed)}")
        out[gene] = tuple(float(v) for v in value) if gene == "mlp_ratio" else tuple(value)
    for dim in out["dim"]:
        if dim <= 0 or dim % head_dim:
            raise ValueError(f"{where}: 'dim' choice {dim!r} must be a positive multiple of head_dim {head_dim}")
        for r in out["mlp_ratio"]:
            if r <= 0 or abs(dim * r - round(dim * r)) > 1e-9:
                raise ValueError(f"{where}: 'mlp_ratio' choice {r} times dim {dim} must be a whole number")
    for gene in ("topk", "regions", "window"):
        if not all(v >= 1 for v in out[gene]):
            raise ValueError(f"{where}: '{gene}' choices must be positive integers, got {list(out[gene])}")
    return StageChoices(**out)


def _kind_name(kind) -> str:
    return {str: "names", int: "integers"}.get(kind, "numbers")
