"""Presets: every published model's closest arch is a valid arch of unified-224, and `nas flops --preset` /
`nas retrain --preset` read it (docs/presets.md holds the published figures they are compared with)."""
import json

import pytest

from nas.cli import main
from nas.cost_model import arch_cost
from search_spaces import load_arch
from search_spaces.presets import preset_names, preset_path

# (MACs, params) published or counted from the official code at 224x224 (docs/presets.md), and the relative
# distance our closest arch may have: 10% unless docs/presets.md explains more.
PUBLISHED = {
    "biformer-t": ((2.2e9, 13.1e6), 0.10),
    "mpvit-t": ((1.6e9, 5.8e6), 0.10),
    "mpvit-xs": ((2.9e9, 10.5e6), 0.35),  # stage 3 at width 128, not 192
    "cat-t": ((2.8e9, 17.0e6), 0.10),
    "fan-t": ((1.564e9, 7.3e6), 0.10),  # MACs counted from the official code (the README gives none)
    "deit-t": ((1.25e9, 5.7e6), 0.10),
    "psvit": (None, None),  # not verified against the paper
}


def test_every_preset_is_listed_with_its_published_figures():
    assert preset_names() == sorted(PUBLISHED)
    assert {"biformer-t", "mpvit-t", "mpvit-xs", "cat-t", "fan-t", "psvit", "deit-t"} <= set(preset_names())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_preset_is_a_valid_arch_near_the_published_cost(name):
    arch, space = load_arch(preset_path(name))
    assert space.name == "unified-224"
    macs, params = arch_cost(arch, space)
    published, tolerance = PUBLISHED[name]
    if published is not None:
        assert abs(macs / published[0] - 1) <= tolerance, (name, macs)


def test_flops_takes_a_preset(capsys):
    assert main(["flops", "--preset", "fan-t", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    arch, space = load_arch(preset_path("fan-t"))
    assert result["macs"] == arch_cost(arch, space)[0] and result["arch_hash"] == arch.hash


@pytest.mark.parametrize("argv, message", [
    (["flops"], "give an arch file ARCH.yaml or --preset NAME"),
    (["flops", "--preset", "vit-huge"], "invalid choice: 'vit-huge'"),
    (["retrain", "--preset", "deit-t", "--arch", "x.yaml"], "--preset 'deit-t' and --arch 'x.yaml': give one"),
])
def test_bad_preset_use_is_one_error_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
