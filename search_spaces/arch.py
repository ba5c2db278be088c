"""An architecture: one point of a search space, as a frozen dataclass that round-trips through YAML."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import yaml

from search_spaces.operators import CELL_KINDS, live_genes, roles

OPTIONAL_GENES = ("attn", "topk", "regions", "mlp_ratio", "window", "mixer")  # None where they change nothing
STAGE_GENES = ("pool", "dim", "paths", "cells", *OPTIONAL_GENES)


@dataclass(frozen=True)
class StageArch:
    """Genes of one stage (docs/design.md section 2; the operators in `search_spaces/operators.py`).

    A gene that no operator of the stage reads is None in the canonical form: `topk` and `regions` of an
    `mhsa` stage, every optional gene of a stage whose cells are all `skip`. `mixer` left out means `mlp`.
    """

    pool: int
    dim: int
    paths: int
    cells: tuple[str, ...]
    attn: str | None
    topk: int | None
    regions: int | None
    mlp_ratio: float | None
    window: int | None = None
    mixer: str | None = None

    @property
    def has_layers(self) -> bool:
        return any(roles(c) for c in self.cells)

    def mlp_hidden(self) -> int:
        return int(round(self.dim * self.mlp_ratio))

    def canonical(self) -> StageArch:
        """The same stage with the genes that change nothing set to None, and cells a tuple, mlp_ratio
        a float (so equal stages hash equal)."""
        cells = tuple(self.cells)
        live = live_genes(cells, self.attn, self.mixer)
        values = {gene: getattr(self, gene) if gene in live else None for gene in OPTIONAL_GENES}
        if isinstance(values["mlp_ratio"], int | float):
            values["mlp_ratio"] = float(values["mlp_ratio"])
        if "mixer" in live and values["mixer"] is None:
            values["mixer"] = "mlp"
        return StageArch(self.pool, self.dim, self.paths, cells, **values)


@dataclass(frozen=True)
class Arch:
    """A full architecture: the space it belongs to (name or YAML path) and its 4 stages."""

    space: str
    stages: tuple[StageArch, ...]

    def canonical(self) -> Arch:
        return Arch(self.space, tuple(s.canonical() for s in self.stages))

    def to_dict(self) -> dict:
        stages = []
        for s in self.stages:
            d = asdict(s)
            d["cells"] = list(s.cells)
            stages.append(d)
        return {"space": self.space, "stages": stages}

    @cached_property  # searches look it up for every candidate, many times over
    def hash(self) -> str:
        """Stable hash of the canonical genes (unlike Python's hash, the same in every process).

        The space reference is left out: one space found by a relative or an absolute path is one space."""
        text = json.dumps(self.canonical().to_dict()["stages"], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


def arch_from_dict(data: object, source: str = "arch") -> Arch:
    """Parse the structure of an arch (types, gene names); values are checked by the space."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with keys 'space' and 'stages', got {type(data).__name__}")
    unknown = set(data) - {"space", "stages"}
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: ['space', 'stages']")
    space = data.get("space")
    if not isinstance(space, str) or not space:
        raise ValueError(f"{source}: 'space' must be a space name or a YAML path, got {space!r}")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{source}: 'stages' must be a non-empty list of stage mappings, got {stages!r}")
    return Arch(space, tuple(_stage_from_dict(s, f"{source}: stage {i + 1}") for i, s in enumerate(stages)))


def _stage_from_dict(data: object, where: str) -> StageArch:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of genes, got {data!r}")
    unknown = set(data) - set(STAGE_GENES)
    if unknown:
        raise ValueError(f"{where}: unknown gene(s) {sorted(unknown)}; allowed: {list(STAGE_GENES)}")
    missing = [g for g in ("pool", "dim", "paths", "cells") if g not in data]
    if missing:
        raise ValueError(f"{where}: missing gene(s) {missing}")
    cells = data["cells"]
    if not isinstance(cells, list | tuple) or not all(isinstance(c, str) for c in cells):
        raise ValueError(f"{where}: gene 'cells' must be a list of {list(CELL_KINDS)}, got {cells!r}")
    for gene in ("pool", "dim", "paths", "topk", "regions", "window"):
        value = data.get(gene)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{where}: gene '{gene}' must be an integer, got {value!r}")
    ratio = data.get("mlp_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, int | float)):
        raise ValueError(f"{where}: gene 'mlp_ratio' must be a number, got {ratio!r}")
    return StageArch(
        pool=data["pool"],
        dim=data["dim"],
        paths=data["paths"],
        cells=tuple(cells),
        attn=data.get("attn"),
        topk=data.get("topk"),
        regions=data.get("regions"),
        mlp_ratio=None if ratio is None else float(ratio),
        window=data.get("window"),
        mixer=data.get("mixer"),
    )
