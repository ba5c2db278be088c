"""A kind added to the operator registry runs end to end: sampled, counted, validated, in the supernet, exported,
and costed (analytic = traced), with no other code knowing it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from nas.cost_model import arch_cost, space_cost_range
from search_spaces import load_space
from search_spaces.macs import add, dwconv, linear
from search_spaces.operators import ATTN, CellKind, TokenMixer, register, unregister
from supernets.supernet import Supernet
from supernets.token_mixers import MixerModule
from tests.nas.test_cost_model import traced_macs
from tests.supernets.test_export import assert_export_equals_supernet


def assert_exported_and_costed(supernet: Supernet, arch, x: torch.Tensor) -> None:
    """Export equality, and the analytic MACs and params of `arch` equal the traced ones of its export."""
    assert_export_equals_supernet(supernet, arch, x)
    model = supernet.export(arch).eval()
    macs, params = arch_cost(arch, supernet.space)
    assert macs == pytest.approx(traced_macs(model, supernet.space.img_size), rel=1e-3)
    assert params == sum(p.numel() for p in model.parameters())


def toy_kernel(q, k, v, num_heads, *, reuse=None, keep=False):
    """Every token gets the mean of the values (no MACs), so the toy's cost is its projections and its conv."""
    return v.mean(dim=(1, 2), keepdim=True).expand_as(v), None  # (B, H, W, C)


def _toy_cost(side, stage, with_qk, head_dim):
    n, dim = side * side, stage.dim
    return add(*[linear(n, dim, dim)] * 4, dwconv(side, dim, 3, bias=True))


TOY = MixerModule(toy_kernel, "toy_dw", lambda dim, heads, stage, ops: ops.dwconv(dim, 3, bias=True),
                  lambda dw, q, v, out: out + dw(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
TOY_SPEC = TokenMixer("toy", (), lambda stage, side: None, _toy_cost, f"{__name__}:TOY", reusable=False)
PAIR = CellKind("pair", (ATTN, ATTN))  # two layers, each attending on its own

SPACE = {
    "name": "toy-space", "img_size": 16, "num_classes": 4, "head_dim": 8, "stem_stride": 4, "conv_norm": "bn",
    "stages": [{"pool": [1, 2], "dim": [8, 16], "paths": [1, 2], "max_cells": 1,
                "cells": ["pair", "layer", "shared", "skip"],
                "attn": ["toy", "mhsa", "bra"], "topk": [1, 2], "regions": [1, 2], "mlp_ratio": [2]}] * 4,
}


@pytest.fixture(scope="module")
def toy_space(tmp_path_factory):
    register(TOY_SPEC)
    register(PAIR)
    path = tmp_path_factory.mktemp("toy") / "toy.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    try:
        yield load_space(str(path))
    finally:
        unregister(TOY_SPEC)
        unregister(PAIR)


def test_toy_kinds_are_sampled_validated_and_refused_where_they_cannot_run(toy_space):
    rng = np.random.default_rng(0)
    archs = [toy_space.sample(rng) for _ in range(200)]
    stages = [s for a in archs for s in a.stages]
    assert any(s.attn == "toy" for s in stages) and any("pair" in s.cells for s in stages)
    assert all(s.topk is None for s in stages if s.attn == "toy")  # the toy reads no BRA gene
    arch = archs[0]
    shared = type(arch)(arch.space, (arch.stages[0].__class__(1, 8, 1, ("shared",), "toy", None, None, 2.0),
                                     *arch.stages[1:]))
    with pytest.raises(ValueError, match="cell 'shared' reuses the attention of 'toy', which keeps none"):
        toy_space.validate(shared)
    bounds = space_cost_range(toy_space)
    assert all(bounds["min_macs"] <= arch_cost(a, toy_space)[0] <= bounds["max_macs"] for a in archs)


def test_toy_kinds_export_equal_to_the_supernet_and_cost_what_they_trace(toy_space):
    torch.manual_seed(0)
    supernet = Supernet(toy_space).eval()
    rng = np.random.default_rng(1)
    archs = [a for a in (toy_space.sample(rng) for _ in range(60))
             if any(s.attn == "toy" and "pair" in s.cells for s in a.stages)][:4]
    assert archs
    x = torch.randn(2, 3, 16, 16)
    for arch in archs:
        assert_exported_and_costed(supernet, arch, x)
