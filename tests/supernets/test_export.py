"""supernet.export(arch): a standalone model of plain modules whose output equals the supernet's."""
import numpy as np
import pytest
import timm
import torch

import nas  # noqa: F401  (registers nas_vit with timm)
from search_spaces import load_space
from supernets.elastic_ops import Elastic
from supernets.nas_vit import NasViT
from supernets.supernet import Supernet


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    space = load_space("tiny-32")
    return space, Supernet(space).eval()


def assert_export_equals_supernet(supernet: Supernet, arch, x: torch.Tensor) -> None:
    """The standalone model of `arch` (its active weights copied out) computes the supernet's output with `arch`
    active, to 1e-5."""
    with torch.no_grad():
        expected = supernet(x, arch)
        torch.testing.assert_close(supernet.export(arch).eval()(x), expected, atol=1e-5, rtol=0)


def _sample(space, n, seed):
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def test_export_equals_supernet_on_tiny_archs(tiny):
    space, supernet = tiny
    x = torch.randn(3, 3, 32, 32)
    archs = _sample(space, 24, seed=1)
    assert any(s.attn == "bra" for a in archs for s in a.stages)
    assert any(s.attn == "mhsa" for a in archs for s in a.stages)
    assert {c for a in archs for s in a.stages for c in s.cells} == {"layer", "shared", "skip"}
    for arch in archs:
        assert_export_equals_supernet(supernet, arch, x)


def test_export_equals_supernet_on_unified_224_archs():
    torch.manual_seed(0)
    space = load_space("unified-224")
    supernet = Supernet(space).eval()
    x = torch.randn(1, 3, 224, 224)
    for arch in _sample(space, 3, seed=2):
        assert_export_equals_supernet(supernet, arch, x)


def test_exported_model_holds_no_supernet_module_and_shares_no_storage(tiny):
    space, supernet = tiny
    arch = _sample(space, 1, seed=3)[0]
    model = supernet.export(arch)
    assert type(model) is NasViT
    assert not any(isinstance(m, Elastic) for m in model.modules())
    assert all(type(m).__module__.split(".")[0] in ("torch", "timm", "supernets") for m in model.modules())
    assert not any(type(m).__module__ in ("supernets.supernet", "supernets.elastic_ops") for m in model.modules())
    supernet_storage = {p.untyped_storage().data_ptr() for p in supernet.state_dict().values()}
    assert not any(t.untyped_storage().data_ptr() in supernet_storage for t in model.state_dict().values())
    # training the export leaves the supernet untouched
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())


def test_exported_model_has_only_the_arch_weights(tiny):
    space, supernet = tiny
    from nas.cost_model import arch_cost

    for arch in _sample(space, 10, seed=4):
        model = supernet.export(arch)
        assert sum(p.numel() for p in model.parameters()) == arch_cost(arch, space)[1]


def test_gradients_reach_only_active_weights(tiny):
    """Every entry with a gradient lies inside the slice that its op ran with (as the unused-weights guard
    records it), and the active slices do get gradients."""
    from nas.train.subnet_optimizer import SubnetOptimizer

    space, supernet = tiny
    supernet.train()
    recorder = SubnetOptimizer(torch.optim.SGD(supernet.parameters(), lr=0.0), supernet)  # records the slices
    try:
        for seed in (5, 6, 7):
            arch = _sample(space, 1, seed=seed)[0]
            supernet.zero_grad(set_to_none=True)
            supernet(torch.randn(2, 3, 32, 32), arch).sum().backward()
            touched = 0
            for param, (module, name) in recorder.owners.items():
                inside = torch.zeros_like(param, dtype=torch.bool)
                for config in recorder.ran.get(module, ()):
                    module.config_view(config, name, inside).fill_(True)
                if param.grad is not None:
                    outside = (param.grad != 0) & ~inside
                    assert not outside.any(), f"{module.__class__.__name__}.{name}: gradient outside its slice"
                    touched += int((param.grad != 0).sum())
            assert touched > 0.5 * sum(p.numel() for p in supernet.export(arch).parameters())
            recorder.ran.clear()
    finally:
        supernet.eval()


def test_timm_create_model_builds_the_standalone_model(tmp_path, tiny):
    space, _ = tiny
    arch = _sample(space, 1, seed=6)[0]
    path = tmp_path / "arch.yaml"
    arch.save(path)
    model = timm.create_model("nas_vit", arch=str(path), num_classes=7)
    assert isinstance(model, NasViT) and model.arch == arch
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert timm.create_model("nas_vit", arch=arch).num_classes == space.num_classes


def test_batchnorm_space_exports_running_statistics(tmp_path):
    text = (load_space("tiny-32").to_dict())
    text.update(name="tiny-32-bn", conv_norm="bn")
    import yaml

    path = tmp_path / "bn.yaml"
    path.write_text(yaml.safe_dump(text))
    space = load_space(str(path))
    supernet = Supernet(space)
    arch = _sample(space, 1, seed=7)[0]
    with torch.no_grad():
        supernet.train()(torch.randn(4, 3, 32, 32), arch)  # updates the active running statistics
        supernet.eval()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(supernet.export(arch).eval()(x), supernet(x, arch), atol=1e-5, rtol=0)
