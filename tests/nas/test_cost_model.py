"""Analytic MACs and params equal the traced counts of the exported model (docs/design.md section 5)."""
import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nas.cost_model import arch_cost, arch_cost_breakdown
from search_spaces import load_space
from supernets.attention import bra_kernel
from supernets.nas_vit import NasViT


def traced_macs(model: NasViT, img_size: int) -> float:
    """FlopCounterMode / 2 with the math SDPA backend and BRA's gather kernel: the dense kernel, chosen
    for speed when routing keeps many regions, does more MACs than the nominal count BiFormer reports."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), bra_kernel("gather"), \
            FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, img_size, img_size))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name,n", [("tiny-32", 30), ("unified-224", 4)])
def test_analytic_equals_traced(name, n):
    space = load_space(name)
    rng = np.random.default_rng(11)
    kinds = set()
    for _ in range(n):
        arch = space.sample(rng)
        kinds |= {s.attn for s in arch.stages}
        model = NasViT(arch, space).eval()
        macs, params = arch_cost(arch, space)
        assert macs == pytest.approx(traced_macs(model, space.img_size), rel=1e-3)
        assert params == sum(p.numel() for p in model.parameters())
    assert {"bra"} <= kinds


def test_bra_with_padding_and_shared_cells_is_counted():
    """A hand-written arch that pads (4x4 map, S=3) and shares BRA attention across cells."""
    space = load_space("tiny-32")
    arch = space.sample(np.random.default_rng(0))
    stages = list(arch.stages)
    stages[0] = type(stages[0])(2, 16, 2, ("shared",), "bra", 4, 4, 2.0)  # 8 -> 4x4 map, no padding
    stages[1] = type(stages[1])(1, 32, 1, ("shared",), "bra", 4, 3, 4.0)  # 4x4 padded to 6x6
    arch = type(arch)(arch.space, tuple(stages))
    arch = space.validate(arch)
    model = NasViT(arch, space).eval()
    assert arch_cost(arch, space)[0] == pytest.approx(traced_macs(model, 32), rel=1e-3)


def test_breakdown_sums_to_total():
    space = load_space("unified-224")
    arch = space.sample(np.random.default_rng(3))
    report = arch_cost_breakdown(arch, space)
    assert [p[0] for p in report.parts] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    assert sum(p[2] for p in report.parts) == report.macs == arch_cost(arch, space)[0]
    assert sum(p[3] for p in report.parts) == report.params
    assert [p[1] for p in report.parts[1:5]] == space.stage_sizes(arch)
