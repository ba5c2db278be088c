"""The standalone model as a timm citizen: backbone features, intermediates, classifier reset, pretrained_cfg, and
`pretrained=True` loading an export folder's weights."""
import numpy as np
import pytest
import timm
import torch
from timm.layers import DropPath

import nas  # noqa: F401  (registers nas_vit with timm)
from nas.export.exported_model import read_exported, write_exported
from search_spaces import load_space
from supernets.nas_vit import NasViT


@pytest.fixture(scope="module")
def space():
    return load_space("tiny-32")


@pytest.fixture(scope="module")
def arch(space):
    # An arch that pools in some stages, so the maps' strides differ.
    rng = np.random.default_rng(3)
    archs = (space.sample(rng) for _ in range(200))
    return next(a for a in archs if len({s.pool for s in a.stages}) > 1)


@pytest.fixture(scope="module")
def export(tmp_path_factory, space, arch):
    """An export folder of randomly initialised weights, written as `nas export` writes one."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export") / "a0"
    model = NasViT(arch, space)
    meta = {"space": space.name, "space_hash": space.hash, "arch_hash": arch.hash, "num_classes": space.num_classes,
            "pretrained_cfg": {"mean": (0.3, 0.3, 0.3), "std": (0.4, 0.4, 0.4)}}
    write_exported(folder, model, meta)
    return folder


def _x(space, n=3):
    return torch.randn(n, space.in_chans, space.img_size, space.img_size, generator=torch.Generator().manual_seed(1))


def _stage_maps(model: NasViT, x):
    maps, x = [], model.stem(x)
    for stage in model.stages:
        x = stage(x)
        maps.append(x)
    return maps


def test_features_only_returns_every_stage_map_with_its_channels_and_stride(export, space):
    full = read_exported(export).model
    backbone = timm.create_model("nas_vit", pretrained=True, arch=str(export / "arch.yaml"), features_only=True).eval()
    x = _x(space)
    with torch.no_grad():
        maps, expected = backbone(x), _stage_maps(full, x)
    assert len(maps) == len(expected) == 4
    assert backbone.feature_info.channels() == [m.shape[1] for m in maps]
    assert backbone.feature_info.reduction() == [space.img_size // m.shape[-1] for m in maps]
    assert len(set(backbone.feature_info.reduction())) > 1  # the fixture's arch pools
    for got, want in zip(maps, expected):
        assert torch.equal(got, want)
    assert not any(name.startswith("model.head.fc") for name, _ in backbone.named_parameters())


def test_out_indices_take_some_stages_and_drop_the_later_ones(export, space):
    full = read_exported(export).model
    backbone = timm.create_model("nas_vit", pretrained=True, arch=str(export / "arch.yaml"), features_only=True,
                                 out_indices=(0, 2)).eval()
    x = _x(space)
    with torch.no_grad():
        maps, expected = backbone(x), _stage_maps(full, x)
    assert [m.shape for m in maps] == [expected[0].shape, expected[2].shape]
    assert torch.equal(maps[1], expected[2])
    assert len(backbone.model.stages) == 3  # stage 3 was pruned: it computes nothing the backbone returns


def test_forward_intermediates_match_the_forward_pass(space, arch):
    torch.manual_seed(0)
    model = NasViT(arch, space).eval()
    x = _x(space)
    with torch.no_grad():
        expected = _stage_maps(model, x)
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x)) and len(maps) == 4
        assert all(torch.equal(a, b) for a, b in zip(maps, expected))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape for m in last_two] == [m.shape for m in expected[2:]]
        first = model.forward_intermediates(x, indices=[-4], stop_early=True)[1]
        assert torch.equal(first[0], expected[0])
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        # the head's LayerNorm over channels, then its mean over tokens, is the head's pre-logits
        assert torch.allclose(normed.mean(dim=(2, 3)), model.forward_head(final, pre_logits=True), atol=1e-6)
        assert torch.equal(model.forward_head(final), model(x))
    for bad in (0, 5, [4], [-5], []):
        with pytest.raises(ValueError, match="indices="):
            model.forward_intermediates(x, indices=bad)


def test_reset_classifier_keeps_the_features(space, arch):
    torch.manual_seed(0)
    model = NasViT(arch, space).eval()
    x = _x(space)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(7)
        assert model(x).shape == (3, 7) and model.num_classes == 7 and model.get_classifier().out_features == 7
        model.reset_classifier(0)
        assert torch.equal(model(x), pooled)
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(3, global_pool="max")


def test_pretrained_loads_the_export_and_records_its_cfg(export, space):
    exported = read_exported(export)
    model = timm.create_model("nas_vit", pretrained=True, arch=str(export / "arch.yaml")).eval()
    x = _x(space)
    with torch.no_grad():
        assert torch.equal(model(x), exported.model(x))
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (space.in_chans, space.img_size, space.img_size)
    assert (cfg["classifier"], cfg["num_classes"]) == ("head.fc", space.num_classes)
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == ((0.3,) * 3, (0.4,) * 3)  # from meta.json
    assert timm.data.resolve_data_config(model=model)["mean"] == (0.3,) * 3

    # Another number of classes: the backbone's weights, a new classifier (timm's rule for pretrained weights).
    three = timm.create_model("nas_vit", pretrained=True, arch=str(export / "arch.yaml"), num_classes=3).eval()
    with torch.no_grad():
        assert three(x).shape == (3, 3)
        assert torch.equal(three.forward_features(x), exported.model.forward_features(x))


def test_pretrained_without_an_export_folder_and_a_wrong_in_chans_are_errors(tmp_path, space, arch, export):
    arch.save(tmp_path / "arch.yaml")
    with pytest.raises(ValueError, match="no hub weights"):
        timm.create_model("nas_vit", pretrained=True, arch=str(tmp_path / "arch.yaml"))
    with pytest.raises(ValueError, match="in_chans=1"):
        timm.create_model("nas_vit", arch=str(tmp_path / "arch.yaml"), in_chans=1)
    with pytest.raises(ValueError, match=r"unexpected argument\(s\) \['drop_rate'\]"):
        timm.create_model("nas_vit", arch=arch, drop_rate=0.1)


def test_drop_path_is_linear_over_depth_and_only_acts_while_training(space):
    rng = np.random.default_rng(5)
    arch = next(a for a in (space.sample(rng) for _ in range(200))
                if sum(k != "skip" for s in a.stages for k in s.cells) >= 3 and a.stages[-1].cells[-1] != "skip")
    torch.manual_seed(0)
    plain = NasViT(arch, space).eval()
    dropping = timm.create_model("nas_vit", arch=arch, drop_path_rate=0.2)
    dropping.load_state_dict(plain.state_dict())  # the same parameters and buffers: DropPath holds none
    rates = [m.drop_prob for m in dropping.modules() if isinstance(m, DropPath)]
    assert max(rates) == pytest.approx(0.2) and 0.0 not in rates  # the first layer (rate 0) has no DropPath
    assert not any(isinstance(m, DropPath) for m in plain.modules())
    last = dropping.stages[-1].paths[0].cells[-1]
    assert (last.layer_b or last.layer_a).drop_path.drop_prob == pytest.approx(0.2)  # the deepest layer: the rate
    x = _x(space, 8)
    with torch.no_grad():
        assert torch.equal(dropping.eval()(x), plain(x))
        dropping.train()
        torch.manual_seed(1)
        first = dropping(x)
        assert not torch.equal(first, dropping(x))  # other branches dropped on the second pass
