"""Validation errors name the gene (or field), the value and the allowed values (docs/design.md sections 2 and 9.2)."""
from __future__ import annotations

import copy
import re

import pytest
import yaml

from search_spaces import Arch, StageArch, builtin_spaces, load_arch, load_space
from search_spaces.arch import arch_from_dict
from search_spaces.loading import BUILTIN_DIR
from search_spaces.operators import CELL_KINDS
from search_spaces.space import space_from_dict

# tiny-32: 8x8 map after the stem; token map sides 8, 4, 2, 2 with these pools.
TINY_ARCH = {"space": "tiny-32", "stages": [
    {"pool": 1, "dim": 16, "paths": 1, "cells": ["layer"], "attn": "bra", "topk": 1, "regions": 4, "mlp_ratio": 2.0},
    {"pool": 2, "dim": 32, "paths": 2, "cells": ["shared"], "attn": "mhsa", "topk": None, "regions": None,
     "mlp_ratio": 4.0},
    {"pool": 2, "dim": 48, "paths": 1, "cells": ["layer", "skip"], "attn": "bra", "topk": 4, "regions": 2,
     "mlp_ratio": 2.0},
    {"pool": 1, "dim": 64, "paths": 3, "cells": ["layer"], "attn": "bra", "topk": 2, "regions": 2, "mlp_ratio": 2.0},
]}
# unified-224: dims overlap between stages 2 and 3, so a shrinking dim is expressible.
UNIFIED_ARCH = {"space": "unified-224", "stages": [
    {"pool": 2, "dim": 64, "paths": 1, "cells": ["layer", "skip"], "attn": "bra", "topk": 4, "regions": 7,
     "mlp_ratio": 4.0},
    {"pool": 2, "dim": 192, "paths": 2, "cells": ["shared", "skip"], "attn": "mhsa", "mlp_ratio": 3.0},
    {"pool": 2, "dim": 256, "paths": 1, "cells": ["layer", "layer"] + ["skip"] * 6, "attn": "bra", "topk": 8,
     "regions": 7, "mlp_ratio": 2.0},
    {"pool": 2, "dim": 512, "paths": 1, "cells": ["layer", "skip"], "attn": "mhsa", "mlp_ratio": 4.0},
]}


def _edit(base: dict, stage: int | None = None, **genes) -> dict:
    data = copy.deepcopy(base)
    if stage is None:
        data.update(genes)
    else:
        data["stages"][stage].update(genes)
    return data


def _drop_stage(base: dict) -> dict:
    data = copy.deepcopy(base)
    data["stages"].pop()
    return data


@pytest.mark.parametrize("base", [TINY_ARCH, UNIFIED_ARCH], ids=["tiny-32", "unified-224"])
def test_base_archs_are_valid(base, tmp_path, write_yaml):
    arch, space = load_arch(write_yaml(tmp_path / "a.yaml", base))
    assert space.contains(arch) and arch == arch_from_dict(base).canonical()


# Allowed values come from the built-in spaces themselves, so the cases follow edits of their YAML.
TINY, UNIFIED = load_space("tiny-32").stages, load_space("unified-224").stages


def _allowed(values) -> str:
    return re.escape(str(list(values)))


def _outside(values) -> int:
    """The smallest integer >= 3 that is not a choice."""
    return next(v for v in range(3, 1000) if v not in values)


def _exceeding(regions: tuple[int, ...], topks: tuple[int, ...]) -> tuple[int, int]:
    """(regions, topk) choices with topk > regions^2."""
    return next((r, k) for r in sorted(regions) for k in sorted(topks) if k > r * r)


BAD_TOPK = _exceeding(TINY[3].regions, TINY[3].topk)
ARCH_ERRORS = {  # case -> (arch mapping, regex the error must match)
    "bad pool": (_edit(TINY_ARCH, 0, pool=3),
                 rf"stage 1: gene 'pool' = 3 is not allowed; allowed: {_allowed(TINY[0].pool)}"),
    "bad dim": (_edit(TINY_ARCH, 1, dim=_outside(TINY[1].dim)),
                rf"stage 2: gene 'dim' = {_outside(TINY[1].dim)} .*allowed: {_allowed(TINY[1].dim)}"),
    "bad paths": (_edit(TINY_ARCH, 0, paths=4), rf"gene 'paths' = 4 .*allowed: {_allowed(TINY[0].paths)}"),
    "too few cells": (_edit(TINY_ARCH, 2, cells=["layer"]),
                      r"stage 3: gene 'cells' must have 2 entries, got \['layer'\]"),
    "too many cells": (_edit(TINY_ARCH, 0, cells=["layer", "layer"]),
                       r"stage 1: gene 'cells' must have 1 entries, got \['layer', 'layer'\]"),
    "bad cell kind": (_edit(TINY_ARCH, 2, cells=["layer", "conv"]),
                      rf"stage 3: gene 'cells\[1\]' = 'conv' .*allowed: {_allowed(TINY[2].cells)}"),
    "cells not a list": (_edit(TINY_ARCH, 0, cells="layer"),
                         rf"gene 'cells' must be a list of {re.escape(str(list(CELL_KINDS)))}"),
    "bad attn": (_edit(TINY_ARCH, 1, attn="linear"),
                 rf"stage 2: gene 'attn' = 'linear' .*allowed: {_allowed(TINY[1].attn)}"),
    "attn not in this stage": (_edit(UNIFIED_ARCH, 0, attn="mhsa"),
                               rf"stage 1: gene 'attn' = 'mhsa' .*allowed: {_allowed(UNIFIED[0].attn)}"),
    "missing attn": (_edit(TINY_ARCH, 0, attn=None),
                     rf"stage 1: gene 'attn' = None .*allowed: {_allowed(TINY[0].attn)}"),
    "bad topk": (_edit(TINY_ARCH, 0, topk=_outside(TINY[0].topk)),
                 rf"stage 1: gene 'topk' = {_outside(TINY[0].topk)} .*allowed: {_allowed(TINY[0].topk)}"),
    "bad regions": (_edit(TINY_ARCH, 0, regions=_outside(TINY[0].regions)),
                    rf"stage 1: gene 'regions' = {_outside(TINY[0].regions)} .*allowed: {_allowed(TINY[0].regions)}"),
    "bad mlp_ratio": (_edit(TINY_ARCH, 0, mlp_ratio=_outside(TINY[0].mlp_ratio)),
                      rf"stage 1: gene 'mlp_ratio' = {float(_outside(TINY[0].mlp_ratio))} .*"
                      rf"allowed: {_allowed(TINY[0].mlp_ratio)}"),
    "regions > map side": (_edit(_edit(TINY_ARCH, 0, pool=2), 2, regions=max(TINY[2].regions),
                                 topk=min(TINY[2].topk)),
                           rf"stage 3: gene 'regions' = {max(TINY[2].regions)} exceeds the stage's token map side 1; "
                           r"allowed: regions <= 1"),  # sides 4, 2, 1, 1
    "regions > map side (unified)": (_edit(UNIFIED_ARCH, 3, attn="bra", regions=max(UNIFIED[3].regions),
                                           topk=min(UNIFIED[3].topk)),  # sides 28, 14, 7, 4
                                     rf"stage 4: gene 'regions' = {max(UNIFIED[3].regions)} exceeds .* side 4; "
                                     r"allowed: regions <= 4"),
    "topk > regions^2": (_edit(TINY_ARCH, 3, regions=BAD_TOPK[0], topk=BAD_TOPK[1]),
                         rf"stage 4: gene 'topk' = {BAD_TOPK[1]} exceeds regions\^2 = {BAD_TOPK[0] ** 2}"),
    "shrinking dim": (_edit(UNIFIED_ARCH, 2, dim=128),
                      r"stage 3: gene 'dim' = 128 is smaller than the previous stage's 192"),
    "too few stages": (_drop_stage(TINY_ARCH), r"arch has 3 stages; space 'tiny-32' has 4"),
    "unknown gene key": (_edit(TINY_ARCH, 0, heads=2),
                         r"stage 1: unknown gene\(s\) \['heads'\]; allowed: \['pool', 'dim'"),
    "unknown top-level key": (_edit(TINY_ARCH, None, head=1),
                              r"unknown key\(s\) \['head'\]; allowed: \['space', 'stages'\]"),
    "missing gene": ({"space": "tiny-32", "stages": [{k: v for k, v in s.items() if k != "dim"}
                                                    for s in TINY_ARCH["stages"]]}, r"missing gene\(s\) \['dim'\]"),
    "float gene": (_edit(TINY_ARCH, 0, dim=16.5), r"stage 1: gene 'dim' must be an integer, got 16.5"),
    "string gene": (_edit(TINY_ARCH, 1, topk="2", attn="bra", regions=2), r"gene 'topk' must be an integer, got '2'"),
    "bool gene": (_edit(TINY_ARCH, 0, pool=True), r"gene 'pool' must be an integer, got True"),
    "string mlp_ratio": (_edit(TINY_ARCH, 0, mlp_ratio="2"), r"gene 'mlp_ratio' must be a number, got '2'"),
    "unknown space name": (_edit(TINY_ARCH, None, space="nope"),
                           rf"unknown space 'nope'; built-in spaces: {re.escape(str(builtin_spaces()))}"),
    "not a mapping": ([1, 2], r"expected a mapping with keys 'space' and 'stages', got list"),
    "malformed yaml": ("space: tiny-32\nstages: [{pool: 1, dim: 16\n", r"arch file '.*a\.yaml' is not valid YAML"),
}


@pytest.mark.parametrize("case", list(ARCH_ERRORS))
def test_arch_file_errors(case, tmp_path, write_yaml):
    data, pattern = ARCH_ERRORS[case]
    path = write_yaml(tmp_path / "a.yaml", data)
    with pytest.raises(ValueError, match=pattern) as info:
        load_arch(path)
    if case not in ("unknown space name",):
        assert str(path) in str(info.value)  # the error names the file too


def test_missing_arch_file(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read arch file '.*nope\.yaml'"):
        load_arch(tmp_path / "nope.yaml")


def test_arch_of_another_space(tmp_path, write_yaml):
    path = write_yaml(tmp_path / "a.yaml", UNIFIED_ARCH)
    with pytest.raises(ValueError, match=r"names space 'unified-224', which differs from 'tiny-32'"):
        load_arch(path, space="tiny-32")
    arch = arch_from_dict(UNIFIED_ARCH)
    with pytest.raises(ValueError, match=r"arch belongs to space 'unified-224', not to 'tiny-32'"):
        load_space("tiny-32").validate(arch)


def test_validate_names_gene_on_a_constructed_arch():
    space = load_space("tiny-32")
    arch = arch_from_dict(TINY_ARCH)
    bad = Arch(arch.space, (StageArch(1, 16, 1, ("layer",), "bra", 4, 1, 2.0), *arch.stages[1:]))
    with pytest.raises(ValueError, match=r"stage 1: gene 'topk' = 4 exceeds regions\^2 = 1"):
        space.validate(bad)
    assert not space.contains(bad) and space.contains(arch)


def test_unknown_space_name():
    with pytest.raises(ValueError, match=rf"unknown space 'nope'; built-in spaces: {re.escape(str(builtin_spaces()))}"):
        load_space("nope")
    with pytest.raises(ValueError, match=r"space file '.*missing\.yaml' does not exist"):
        load_space("/nonexistent/missing.yaml")


# ---- space YAML -----------------------------------------------------------------------------------

TINY_SPACE = yaml.safe_load((BUILTIN_DIR / "tiny-32.yaml").read_text())


def _space_edit(stage: int | None = None, drop: str | None = None, **fields) -> dict:
    data = copy.deepcopy(TINY_SPACE)
    target = data if stage is None else data["stages"][stage]
    target.update(fields)
    if drop:
        del target[drop]
    return data


SPACE_ERRORS = {
    "unknown field": (_space_edit(depth=12), r"unknown field\(s\) \['depth'\]; allowed: \["),
    "missing field": (_space_edit(drop="head_dim"), r"missing field\(s\) \['head_dim'\]"),
    "dim not a multiple of head_dim": (_space_edit(1, dim=[32, 40]),
                                       r"stage 2: 'dim' choice 40 must be a positive multiple of head_dim 16"),
    "bad stem_stride": (_space_edit(stem_stride=3), r"'stem_stride' = 3; allowed: \[1, 2, 4\]"),
    "bad conv_norm": (_space_edit(conv_norm="gn"), r"'conv_norm' = 'gn'; allowed: \['ln', 'bn'\]"),
    "bad img_size": (_space_edit(img_size=0), r"'img_size' must be a positive integer, got 0"),
    "three stages": ({**TINY_SPACE, "stages": TINY_SPACE["stages"][:3]},
                     r"'stages' must be a list of 4 stage mappings"),
    "unknown stage gene": (_space_edit(0, heads=[2]), r"stage 1: unknown gene\(s\) \['heads'\]"),
    "bad pool choice": (_space_edit(0, pool=[1, 3]),
                        r"stage 1: 'pool' = \[1, 3\]; each choice must be one of \[1, 2\]"),
    "bad attn choice": (_space_edit(0, attn=["mhsa", "swin"]),
                        r"'attn' = \['mhsa', 'swin'\]; each choice must be one of"),
    "duplicate choices": (_space_edit(0, dim=[16, 16]),
                          r"stage 1: 'dim' choices must be distinct, got \[16, 16\]"),
    "empty choices": (_space_edit(0, paths=[]), r"stage 1: 'paths' must be a non-empty list"),
    "bad max_cells": (_space_edit(0, max_cells=0), r"stage 1: 'max_cells' must be a positive integer, got 0"),
    "fractional mlp width": (_space_edit(0, mlp_ratio=[2.5, 1.03]), r"'mlp_ratio' choice 1.03 times dim 16"),
    "bad topk choice": (_space_edit(0, topk=[0, 1]), r"stage 1: 'topk' choices must be positive integers"),
    "empty space": (_space_edit(0, attn=["bra"], regions=[32], cells=["layer"]),
                    r"no arch satisfies the constraints"),
}


@pytest.mark.parametrize("case", list(SPACE_ERRORS))
def test_space_yaml_errors(case, tmp_path, write_yaml):
    data, pattern = SPACE_ERRORS[case]
    path = write_yaml(tmp_path / "space.yaml", data)
    with pytest.raises(ValueError, match=pattern) as info:
        load_space(str(path))
    assert str(path) in str(info.value)


def test_malformed_space_yaml(tmp_path, write_yaml):
    path = write_yaml(tmp_path / "space.yaml", "name: x\nstages: [\n")
    with pytest.raises(ValueError, match=r"space '.*space\.yaml' is not valid YAML"):
        load_space(str(path))


@pytest.mark.parametrize("fields", [{"dim": [[16]]}, {"mlp_ratio": [None]}], ids=["nested list", "null ratio"])
def test_space_yaml_bad_choice_types_are_value_errors(fields):
    with pytest.raises(ValueError, match=r"stage 1: '(dim|mlp_ratio)'"):
        space_from_dict(_space_edit(0, **fields), "space.yaml")
